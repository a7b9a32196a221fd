//! A task's OCI bundle.
