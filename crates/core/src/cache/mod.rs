//! Content-addressed caching: hashes, the file-state memo, the object store with its run
//! cache, and the lock file. Knows no stage kinds.

pub mod hash;
pub mod lock;
pub mod memo;
pub mod store;

pub use lock::{LockEntry, LockFile};
pub use memo::Memo;
pub use store::{Manifest, Restore, Store};
