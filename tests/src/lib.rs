//! Checks of the repository's promises; the tests live in `tests/tests/`.
