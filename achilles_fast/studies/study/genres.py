"""Built-in texts of five genres for the study's stability-across-texts step (used when no ``--texts`` is given).

``prose`` is the opening of Jane Austen's *Pride and Prejudice* (1813, public domain); the other four were written
for this package and are dedicated to the public domain (CC0).
"""
from __future__ import annotations

GENRES = {
    "prose": (
        "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
        "considered the rightful property of some one or other of their daughters. \"My dear Mr. Bennet,\" said "
        "his lady to him one day, \"have you heard that Netherfield Park is let at last?\" Mr. Bennet replied that "
        "he had not."
    ),
    "news": (
        "GENEVA, March 3 - Officials from twelve countries agreed on Tuesday to expand a joint programme that "
        "monitors water quality in the region's largest lake, after two years of talks. The plan, which still "
        "needs approval from national parliaments, would add forty new sampling stations and publish the "
        "measurements online every week. \"This is a practical step that people will notice,\" said the "
        "programme's director, adding that the first stations could open before the end of the year. Critics said "
        "the budget, about 18 million euros over five years, was too small for the task."
    ),
    "code": (
        "def moving_average(values, window):\n"
        "    \"\"\"Return the moving averages of a list of numbers.\"\"\"\n"
        "    if window <= 0:\n"
        "        raise ValueError(\"window must be positive\")\n"
        "    out = []\n"
        "    total = 0.0\n"
        "    for i, v in enumerate(values):\n"
        "        total += v\n"
        "        if i >= window:\n"
        "            total -= values[i - window]\n"
        "        if i >= window - 1:\n"
        "            out.append(total / window)\n"
        "    return out\n"
        "\n"
        "\n"
        "print(moving_average([1, 2, 3, 4, 5, 6], 3))\n"
    ),
    "dialogue": (
        "ANNA: Did you remember to bring the map?\n"
        "BEN: I thought you had it. You said you would pack it last night.\n"
        "ANNA: I said I would pack the food. The map was your job.\n"
        "BEN: Well, we still have the compass. North is that way, more or less.\n"
        "ANNA: More or less is how we got lost the last time.\n"
        "BEN: Fair. Let's follow the river down to the village and ask someone.\n"
        "ANNA: Fine, but you are carrying the bag.\n"
        "BEN: Deal. And next time I will write a list.\n"
    ),
    "list": (
        "Things to pack for the trip:\n"
        "- passport and tickets\n"
        "- two pairs of walking shoes\n"
        "- a warm jacket\n"
        "- sunscreen\n"
        "- phone charger and adapter\n"
        "- a small first-aid kit\n"
        "- reusable water bottle\n"
        "- snacks for the train\n"
        "- a notebook and pen\n"
        "- the hotel address, printed\n"
        "- an umbrella\n"
        "- a book for the evenings\n"
    ),
}

# appended (in this order) to the scoring text when it is shorter than the longest input length of the study
EXTENSION = ("prose", "news", "dialogue", "list", "code")
