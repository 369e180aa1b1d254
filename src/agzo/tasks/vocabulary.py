"""Word lists for the generated tasks, written for this project (no third-party text).

Kept apart from the generators so the lists can grow without touching the logic. The
items are chosen to be unambiguous: no fruit that is also a colour ("orange"), no animal
that is also a tool ("bat"), no vegetable/fruit borderline cases ("tomato").
"""

from __future__ import annotations

from typing import NamedTuple


class ReviewTopic(NamedTuple):
    """Things a reviewer comments on, with predicates that fit all of them."""

    subjects: tuple[str, ...]
    positive: tuple[str, ...]
    negative: tuple[str, ...]


REVIEW_TOPICS: tuple[ReviewTopic, ...] = (
    ReviewTopic(
        subjects=(
            "the soup",
            "the pasta",
            "the steak",
            "the dessert",
            "the pizza",
            "the salad",
            "the bread",
            "the curry",
        ),
        positive=(
            "was fresh and delicious",
            "tasted amazing",
            "was cooked to perfection",
            "was full of flavor",
            "was the best I have ever had",
        ),
        negative=(
            "was cold and bland",
            "tasted stale",
            "was burnt",
            "was greasy and tasteless",
            "was the worst I have ever had",
        ),
    ),
    ReviewTopic(
        subjects=(
            "the waiter",
            "the staff",
            "the host",
            "the receptionist",
            "the driver",
            "the manager",
        ),
        positive=(
            "was friendly and helpful",
            "was warm and welcoming",
            "treated us kindly",
            "went out of their way to help",
            "was patient and polite",
        ),
        negative=(
            "was rude and slow",
            "ignored us for an hour",
            "was unfriendly and careless",
            "shouted at us",
            "was impatient and rude",
        ),
    ),
    ReviewTopic(
        subjects=("the room", "the bed", "the bathroom", "the lobby", "the kitchen"),
        positive=(
            "was clean and comfortable",
            "was spotless",
            "was bright and cozy",
            "was beautifully decorated",
        ),
        negative=(
            "was dirty and cramped",
            "smelled of mold",
            "was noisy and uncomfortable",
            "was filthy",
        ),
    ),
    ReviewTopic(
        subjects=(
            "the movie",
            "the plot",
            "the acting",
            "the ending",
            "the soundtrack",
            "the show",
        ),
        positive=(
            "was gripping from start to finish",
            "was moving and beautiful",
            "kept me smiling",
            "was brilliant",
            "was a joy to watch",
        ),
        negative=(
            "was dull and predictable",
            "put me to sleep",
            "was painfully slow",
            "was a mess",
            "was a chore to sit through",
        ),
    ),
    ReviewTopic(
        subjects=(
            "the phone",
            "the laptop",
            "the headphones",
            "the blender",
            "the camera",
            "the vacuum cleaner",
            "the printer",
        ),
        positive=(
            "works perfectly",
            "is fast and reliable",
            "was worth every penny",
            "does exactly what I need",
            "has been flawless",
        ),
        negative=(
            "broke after two days",
            "stopped working within a week",
            "is slow and unreliable",
            "was a waste of money",
            "keeps crashing",
        ),
    ),
)

# Predicates that fit any subject, to add variety across topics.
GENERIC_POSITIVE: tuple[str, ...] = (
    "was wonderful",
    "was excellent",
    "was fantastic",
    "was a real delight",
    "was outstanding",
    "was great",
    "was lovely",
    "was superb",
)
GENERIC_NEGATIVE: tuple[str, ...] = (
    "was awful",
    "was terrible",
    "was a huge disappointment",
    "was dreadful",
    "was horrible",
    "was really bad",
    "was a complete disaster",
    "was miserable",
)

REVIEW_OPENERS: tuple[str, ...] = ("", "Honestly, ", "Overall, ", "I have to say ", "In short, ")
POSITIVE_CLOSERS: tuple[str, ...] = (
    "",
    "I would happily come back.",
    "Highly recommended.",
    "I loved it.",
    "We will definitely return.",
    "Five stars.",
)
NEGATIVE_CLOSERS: tuple[str, ...] = (
    "",
    "I would not recommend it.",
    "Never again.",
    "What a waste.",
    "I want my money back.",
    "One star.",
)

# Category name with its article (for "Is a dog an animal?") and bare (for "a kind of
# animal"), mapped to clear members.
CATEGORIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("an animal", "animal"): (
        "dog",
        "cat",
        "horse",
        "cow",
        "lion",
        "tiger",
        "rabbit",
        "elephant",
        "giraffe",
        "sheep",
        "goat",
        "monkey",
        "zebra",
        "wolf",
        "bear",
        "fox",
        "deer",
        "camel",
    ),
    ("a fruit", "fruit"): (
        "apple",
        "banana",
        "pear",
        "cherry",
        "grape",
        "mango",
        "peach",
        "plum",
        "pineapple",
        "strawberry",
        "lemon",
        "watermelon",
        "apricot",
        "raspberry",
    ),
    ("a vehicle", "vehicle"): (
        "car",
        "bus",
        "truck",
        "bicycle",
        "motorcycle",
        "tractor",
        "van",
        "taxi",
        "scooter",
        "ambulance",
        "airplane",
        "helicopter",
        "tram",
    ),
    ("a musical instrument", "musical instrument"): (
        "piano",
        "guitar",
        "violin",
        "drum",
        "flute",
        "trumpet",
        "cello",
        "harp",
        "saxophone",
        "clarinet",
        "banjo",
        "accordion",
        "trombone",
        "harmonica",
    ),
    ("a piece of furniture", "furniture"): (
        "chair",
        "table",
        "sofa",
        "desk",
        "wardrobe",
        "bookshelf",
        "stool",
        "dresser",
        "armchair",
        "bench",
        "cupboard",
    ),
    ("a piece of clothing", "clothing"): (
        "shirt",
        "jacket",
        "coat",
        "sweater",
        "skirt",
        "dress",
        "scarf",
        "glove",
        "sock",
        "blouse",
        "hoodie",
        "raincoat",
    ),
    ("a tool", "tool"): (
        "hammer",
        "screwdriver",
        "wrench",
        "saw",
        "drill",
        "chisel",
        "shovel",
        "rake",
        "axe",
        "crowbar",
        "trowel",
        "mallet",
    ),
}

PEOPLE: tuple[str, ...] = (
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jack",
    "Keiko",
    "Liam",
    "Maria",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Will",
    "Yuki",
    "Zoe",
)
MENTION_VERBS: tuple[str, ...] = (
    "drew a picture of",
    "wrote a story about",
    "asked about",
    "read about",
    "talked about",
    "saw",
    "dreamed about",
)
