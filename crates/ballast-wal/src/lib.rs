//! ballast-wal
