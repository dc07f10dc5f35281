"""``review``: decide duplicate groups one by one (the library API the review app is built on)."""
