"""What every stage shares: errors, hashing, the JSON Lines store, progress and logging,
the backend contract and registry, and the row schemas.

The stages import from here and from the stages before them (constitution ->
generation -> judging -> training); this package imports none of them.
"""
