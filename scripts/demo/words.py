"""Word lists for the bundled demo (scripts/demo/make_demo.py). Written for llmtune; MIT like the rest
of the repository. Everything the demo's data and tokenizer contain is built from these lists and
the templates in make_demo.py, so the demo has no third-party text in it.
"""

# Pairs of opposites; every word appears in one pair only, so "the opposite of X" has one answer.
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("open", "closed"),
    ("happy", "sad"), ("light", "dark"), ("new", "old"), ("early", "late"), ("full", "empty"),
    ("hard", "soft"), ("high", "low"), ("wet", "dry"), ("long", "short"), ("rich", "poor"),
    ("strong", "weak"), ("loud", "quiet"), ("thick", "thin"), ("clean", "dirty"), ("near", "far"),
    ("inside", "outside"), ("left", "right"), ("day", "night"), ("first", "last"), ("push", "pull"),
    ("win", "lose"), ("buy", "sell"), ("give", "take"), ("start", "finish"), ("before", "after"),
    ("above", "below"), ("front", "back"), ("top", "bottom"), ("true", "false"), ("good", "bad"),
    ("sweet", "sour"), ("wide", "narrow"), ("deep", "shallow"), ("sharp", "dull"), ("safe", "dangerous"),
    ("smooth", "rough"), ("awake", "asleep"), ("come", "go"), ("laugh", "cry"), ("remember", "forget"),
    ("friend", "enemy"), ("summer", "winter"), ("north", "south"), ("east", "west"), ("always", "never"),
    ("many", "few"), ("cheap", "expensive"), ("easy", "difficult"), ("borrow", "lend"),
    ("question", "answer"), ("morning", "evening"), ("floor", "ceiling"), ("arrive", "leave"),
    ("accept", "refuse"), ("heavy", "weightless"), ("brave", "afraid"), ("tidy", "messy"),
]

# Singular -> plural: regular, -es, -y -> -ies, -f(e) -> -ves, and the common irregular ones.
PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("tree", "trees"), ("book", "books"), ("apple", "apples"),
    ("car", "cars"), ("bird", "birds"), ("house", "houses"), ("cup", "cups"), ("door", "doors"),
    ("hat", "hats"), ("pen", "pens"), ("river", "rivers"), ("road", "roads"), ("star", "stars"),
    ("ship", "ships"), ("shoe", "shoes"), ("chair", "chairs"), ("table", "tables"), ("window", "windows"),
    ("flower", "flowers"), ("garden", "gardens"), ("horse", "horses"), ("girl", "girls"), ("boy", "boys"),
    ("frog", "frogs"), ("lamp", "lamps"), ("bell", "bells"), ("coat", "coats"), ("boat", "boats"),
    ("box", "boxes"), ("fox", "foxes"), ("bus", "buses"), ("dish", "dishes"), ("glass", "glasses"),
    ("watch", "watches"), ("brush", "brushes"), ("dress", "dresses"), ("class", "classes"), ("bench", "benches"),
    ("city", "cities"), ("baby", "babies"), ("lady", "ladies"), ("party", "parties"), ("story", "stories"),
    ("berry", "berries"), ("puppy", "puppies"), ("family", "families"), ("cherry", "cherries"), ("pony", "ponies"),
    ("leaf", "leaves"), ("wolf", "wolves"), ("knife", "knives"), ("loaf", "loaves"), ("shelf", "shelves"),
    ("thief", "thieves"), ("calf", "calves"), ("scarf", "scarves"),
    ("mouse", "mice"), ("child", "children"), ("man", "men"), ("woman", "women"), ("foot", "feet"),
    ("tooth", "teeth"), ("goose", "geese"), ("person", "people"), ("ox", "oxen"), ("sheep", "sheep"),
    ("fish", "fish"), ("deer", "deer"),
]

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "grey", "purple", "orange", "gold"]
ANIMALS = ["ant", "bee", "cat", "dog", "duck", "eagle", "fox", "goat", "hen", "horse", "lion", "mouse", "owl",
           "pig", "rabbit", "seal", "tiger", "whale", "wolf", "zebra", "bear", "crab", "frog", "snake"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "orange", "peach", "pear", "plum", "kiwi"]
NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Finn", "Grace", "Hugo", "Ida", "Jack", "Lena", "Max", "Nora",
         "Omar", "Pia", "Sam", "Tara", "Theo", "Uma", "Zoe"]
PLACES = ["park", "school", "market", "river", "forest", "beach", "village", "garden", "kitchen", "library"]

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_word(n):
    """0..100 in English words."""
    if n == 100:
        return "one hundred"
    if n < 20:
        return NUMBER_WORDS[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] if ones == 0 else f"{TENS[tens]}-{NUMBER_WORDS[ones]}"


def plural(noun):
    """The plural of a noun from these lists (PLURALS first, else the regular rules)."""
    known = dict(PLURALS)
    if noun in known:
        return known[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def spelling_words():
    """Every word the spelling, counting and capital-letter tasks use (sorted, no duplicates)."""
    words = {w for pair in OPPOSITES for w in pair} | {w for pair in PLURALS for w in pair}
    words |= set(COLOURS) | set(ANIMALS) | set(FRUITS) | set(PLACES)
    return sorted(words)
