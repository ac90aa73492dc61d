//! OCI images on disk: deterministic layer tarballs with whiteouts, image configs and
//! manifests, and the content-addressed store that builder pods share on the cache volume.
