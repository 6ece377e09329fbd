//! Runs a command generic over burn's `Backend` on the device the user picked.

/// `dispatch!(kind, command, args)` calls `commands::command::run::<B>(args, &device)` for the backend of `kind`.
macro_rules! dispatch {
    ($kind:expr, $command:ident, $args:expr) => {{
        use llmtrain_core::device::DeviceKind;
        match $kind {
            DeviceKind::Cpu => crate::commands::$command::run::<llmtrain_core::device::CpuBackend>($args, &Default::default()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => crate::commands::$command::run::<llmtrain_core::device::CudaBackend>($args, &Default::default()),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => crate::commands::$command::run::<llmtrain_core::device::WgpuBackend>($args, &Default::default()),
            #[allow(unreachable_patterns)]
            other => Err(anyhow::anyhow!(
                "--device {other}: this llmtrain was built without the `{other}` feature (cargo build --release -p llmtrain-cli --features {other})"
            )),
        }
    }};
}

pub(crate) use dispatch;
