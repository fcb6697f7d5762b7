//! Errors of VM construction and lifecycle.

/// What went wrong, split by who can fix it: [`Error::Config`] is the user's
/// (exit code 2, names the option); the rest are the host's or Caravel's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable; `option` names the flag to fix.
    #[error("{option}: {message}")]
    Config {
        /// The command-line option at fault, e.g. `--kernel`.
        option: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `/dev/kvm` is missing or unusable.
    #[error("cannot use /dev/kvm: {0} (is KVM enabled and accessible to this user?)")]
    KvmUnavailable(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The host lacks something Caravel needs.
    #[error("host KVM lacks {0}")]
    MissingCapability(&'static str),
    /// Guest memory could not be created or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A `--device` could not be passed through (VFIO).
    #[error("--device {0}")]
    Vfio(String),
    /// A snapshot cannot be taken or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A live migration failed (the source keeps running the guest).
    #[error("migration: {0}")]
    Migration(String),
    /// The sandbox cannot be installed.
    #[error("{0} (use --seccomp false to run without a sandbox)")]
    Seccomp(String),
    /// Other I/O (sockets, files, threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the user can fix this by changing the command line (exit code 2).
    pub fn is_config_error(&self) -> bool {
        matches!(self, Self::Config { .. })
    }

    /// Helper for [`Error::Kvm`].
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Kvm { op, source }
    }

    /// Helper for [`Error::Io`].
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Helper for [`Error::Config`].
    pub(crate) fn config(option: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            option,
            message: message.into(),
        }
    }
}
