//! replite-fuse: the FUSE filesystem through which applications open replicated databases.
//! It captures each committed transaction (rollback journal and WAL) on the primary and applies
//! LTX files on replicas; it translates kernel requests into core inputs and never decides
//! policy itself. Tests mount real FUSE filesystems and drive them with rusqlite.
