//! The `ImageBuild` custom resource (group `stagecoach.dev`, version `v1alpha1`): the spec a
//! user writes and the status the controller reports. Types only: no client code, so every
//! crate that needs the shape of an ImageBuild can depend on this one cheaply.
