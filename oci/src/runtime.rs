//! Running bundles under crun.
