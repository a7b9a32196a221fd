//! Whiteouts and layer tarballs. (Skeleton: the oci helper fills this in.)
