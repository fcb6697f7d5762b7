//! Programs for the inside of Caravel's test guests; see `src/bin`.
