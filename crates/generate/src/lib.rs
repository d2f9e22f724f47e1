//! Backend-independent generation.
