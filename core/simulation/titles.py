"""Readable, unique, genre-flavoured titles for the simulated retro catalog."""
from __future__ import annotations

import numpy as np

from core.text import article

ADJECTIVES = (
    "Last", "Silent", "Crimson", "Lonely", "Golden", "Broken", "Hidden", "Midnight", "Burning",
    "Forgotten", "Wild", "Velvet", "Electric", "Frozen", "Savage", "Gentle", "Restless", "Painted",
    "Distant", "Secret", "Dark", "Bright", "Falling", "Endless", "Wicked", "Lucky", "Blue", "Iron",
    "Scarlet", "Hollow", "Stolen", "Desperate", "Shining", "Twisted", "Quiet", "Fearless",
)
NOUNS = (
    "Horizon", "River", "Stranger", "Promise", "Summer", "Frontier", "Mirror", "Highway", "Harbor",
    "Shadow", "Garden", "Empire", "Circus", "Island", "Canyon", "Letter", "Voyage", "Orchid",
    "Station", "Kingdom", "Signal", "Melody", "Fortune", "Alibi", "Witness", "Mountain", "Carnival",
    "Crown", "Lantern", "Bridge", "Heart", "Storm", "Desert", "Moon", "Compass", "Ballroom",
)
GENRE_NOUNS = {
    "Western": ("Gunfighter", "Sheriff", "Outlaw", "Stagecoach", "Ranch", "Saloon", "Posse"),
    "Sci-Fi": ("Robot", "Galaxy", "Planet", "Starship", "Android", "Nebula", "Colony"),
    "Horror": ("Crypt", "Haunting", "Curse", "Werewolf", "Ghoul", "Asylum", "Vampire"),
    "Romance": ("Kiss", "Valentine", "Sweetheart", "Honeymoon", "Serenade", "Bride"),
    "Crime": ("Heist", "Racket", "Informer", "Mobster", "Getaway", "Detective"),
    "War": ("Battalion", "Battle", "Regiment", "Sergeant", "Armistice", "Convoy"),
    "Children": ("Puppy", "Treehouse", "Pony", "Playground", "Teddy", "Kite"),
    "Animation": ("Cartoon", "Bunny", "Dragonfly", "Toyshop", "Rabbit", "Dream"),
    "Musical": ("Rhapsody", "Waltz", "Chorus", "Jukebox", "Ballad", "Tango"),
    "Comedy": ("Pickle", "Mix-Up", "Caper", "Goose", "Honeymooners", "Bachelor"),
    "Film-Noir": ("Dame", "Double-Cross", "Fall Guy", "Dragnet", "Nightclub"),
    "Documentary": ("Chronicle", "Expedition", "Portrait", "Journey", "Record"),
}
PATTERNS = (
    "The {adj} {noun}", "{noun} of the {adj} {noun2}", "Return to {noun}", "A {noun} in {place}",
    "The {noun} from {place}", "{adj} {noun}", "Beyond the {adj} {noun}", "{place} {noun}",
)
PLACES = (
    "Tucson", "Casablanca", "Monte Carlo", "Brooklyn", "Vienna", "Santa Fe", "Havana", "Rio",
    "Paris", "Cairo", "Dodge City", "Tokyo", "Venice", "Tangier", "Chicago", "Lisbon", "Avalon",
)
ROMAN = ("II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")


def generate_titles(genre_lists: list[list[str]], rng: np.random.Generator, taken: set[str] | None = None) -> list[str]:
    """One unique title per movie, flavoured by its first genre; sequels resolve collisions."""
    taken = set() if taken is None else set(taken)
    out = []
    for genres in genre_lists:
        flavour = GENRE_NOUNS.get(genres[0] if genres else "", ())
        for attempt in range(50):
            pool = flavour + NOUNS if flavour and rng.random() < 0.6 else NOUNS
            title = PATTERNS[rng.integers(len(PATTERNS))].format(
                adj=ADJECTIVES[rng.integers(len(ADJECTIVES))], noun=pool[rng.integers(len(pool))],
                noun2=NOUNS[rng.integers(len(NOUNS))], place=PLACES[rng.integers(len(PLACES))],
            )
            if title.startswith("A "):     # "An Orchid in Brooklyn", not "A Orchid"
                title = article(title[2:]).capitalize() + title[1:]
            if attempt > 10:
                title = f"{title} {ROMAN[(attempt - 11) % len(ROMAN)]}"
            if title not in taken:
                break
        else:  # pragma: no cover - 50 misses in a row needs a catalog far beyond the word lists
            title = f"{title} ({len(taken)})"
        taken.add(title)
        out.append(title)
    return out
