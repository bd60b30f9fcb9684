//! `RedbStore`: the embedded default store, one redb file.
