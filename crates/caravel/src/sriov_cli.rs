//! `caravel-sriov`: own an SR-IOV PF through vfio-pci and manage its VFs and
//! VF token (the PF driver's side of `--device ...,vf_token=`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vfio::pci::Sysfs;
use vfio::{sriov, PciAddress, VfToken};

/// Manage SR-IOV virtual functions of a PF owned by vfio-pci, with a VF token.
///
/// `enable` binds the PF to vfio-pci, turns on vfio-pci's enable_sriov, sets
/// the VF token through VFIO_DEVICE_FEATURE, writes sriov_numvfs and checks
/// that the VFs came up bound to vfio-pci; VF users (`caravel --device
/// path=...,vf_token=UUID`) must then present the same token. The token is
/// write-only: `status` never shows it. Output is JSON; errors name the
/// sysfs file or ioctl and the fix. Exit status: 0 done, 1 failed, 2 bad
/// command line. Needs root.
#[derive(Debug, Parser)]
#[command(name = "caravel-sriov", version)]
pub struct SriovArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SriovCommand,
    /// Root of /sys and /dev (tests use a fake tree).
    #[arg(long, hide = true, default_value = "/")]
    pub sysfs_root: PathBuf,
}

/// A `caravel-sriov` command.
#[derive(Debug, Subcommand)]
pub enum SriovCommand {
    /// Bind the PF to vfio-pci, set the VF token and create VFs.
    Enable {
        /// The PF, e.g. 0000:00:03.0.
        #[arg(long, value_name = "BDF")]
        pf: PciAddress,
        /// How many VFs (1 to the PF's sriov_totalvfs).
        #[arg(long, value_name = "N")]
        num_vfs: u16,
        /// The VF token (a UUID) VF users must present.
        #[arg(long, value_name = "UUID")]
        vf_token: VfToken,
    },
    /// Remove the PF's VFs (sriov_numvfs = 0).
    Disable {
        /// The PF.
        #[arg(long, value_name = "BDF")]
        pf: PciAddress,
    },
    /// Show PFs, VFs, drivers and IOMMU groups as JSON (all SR-IOV PFs by
    /// default).
    Status {
        /// Only this PF.
        #[arg(long, value_name = "BDF")]
        pf: Option<PciAddress>,
    },
}

/// Runs a command; returns the JSON to print or the error.
pub fn run(args: &SriovArgs) -> Result<String, String> {
    let sysfs = Sysfs::at(&args.sysfs_root);
    let json = match &args.command {
        SriovCommand::Enable {
            pf,
            num_vfs,
            vf_token,
        } => serde_json::to_string_pretty(
            &sriov::enable(
                &sysfs,
                *pf,
                *num_vfs,
                vf_token,
                sriov::set_token_via_feature,
            )
            .map_err(|e| e.to_string())?,
        ),
        SriovCommand::Disable { pf } => {
            serde_json::to_string_pretty(&sriov::disable(&sysfs, *pf).map_err(|e| e.to_string())?)
        }
        SriovCommand::Status { pf: Some(pf) } => {
            serde_json::to_string_pretty(&sriov::status(&sysfs, *pf).map_err(|e| e.to_string())?)
        }
        SriovCommand::Status { pf: None } => {
            serde_json::to_string_pretty(&sriov::status_all(&sysfs))
        }
    };
    json.map_err(|e| e.to_string())
}
