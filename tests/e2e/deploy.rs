//! Placeholder: the deployment manifests' consistency checks (being written).
