"""Data the project makes itself: the embedded grade-school word problems (:mod:`.synthetic`)."""
