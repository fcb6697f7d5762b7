//! `caravel-its dump`: decodes ITS tables saved in KVM's table ABI revision 0
//! (KVM_DEV_ARM_ITS_SAVE_TABLES, or `its::tables::save_tables`) from raw
//! guest-memory images into a device -> event -> LPI -> PE map, and lists
//! every inconsistency.

use std::fs::File;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use its::tables::{self, Decoded};
use its::ItsRegs;

/// `caravel-its`: tools for GICv3 ITS state.
#[derive(Debug, Parser)]
#[command(name = "caravel-its", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `caravel-its` subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode saved ITS tables from guest-memory images.
    ///
    /// Prints every collection and every device -> event -> LPI -> collection
    /// -> PE mapping, then the issues a restore would refuse (entries outside
    /// memory, LPIs out of range, collections missing or on absent PEs) and
    /// warnings (an LPI mapped by several events). Exit status: 0 when the
    /// tables would restore, 1 when they have issues, 2 on bad arguments or
    /// unreadable images.
    #[command(
        after_help = "Example, a 1 GiB RAM dump at 0x40000000 with GITS_BASER0/1 read via \
                      KVM_DEV_ARM_VGIC_GRP_ITS_REGS:\n  caravel-its dump --memory ram.img@0x40000000 \
                      --baser0 0x8107000040020000 --baser1 0x8407000040030000 --cpus 4"
    )]
    Dump(DumpArgs),
}

/// Arguments of `caravel-its dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// A raw guest-memory image and the guest-physical address of its first
    /// byte (default 0); repeat for several RAM ranges.
    #[arg(long = "memory", value_name = "FILE[@GPA]", required = true, value_parser = parse_image)]
    pub memory: Vec<(PathBuf, u64)>,
    /// GITS_BASER0, the device table register (hex with 0x, or decimal).
    #[arg(long, value_name = "VALUE", value_parser = parse_u64)]
    pub baser0: u64,
    /// GITS_BASER1, the collection table register.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64)]
    pub baser1: u64,
    /// Number of vCPUs (PEs): collections must target one of them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub cpus: u32,
    /// LPI INTID bits (GICR_PROPBASER.IDbits + 1); KVM's vGIC has 16.
    #[arg(long, value_name = "BITS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(14..=16))]
    pub lpi_id_bits: u32,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|_| format!("`{s}` is not a number (use 0x for hex)"))
}

fn parse_image(s: &str) -> Result<(PathBuf, u64), String> {
    match s.rsplit_once('@') {
        Some((path, gpa)) => Ok((PathBuf::from(path), parse_u64(gpa)?)),
        None => Ok((PathBuf::from(s), 0)),
    }
}

/// Maps the images privately (copy-on-write: the files are never written).
pub fn map_images(images: &[(PathBuf, u64)]) -> Result<GuestMemoryMmap, String> {
    let mut regions = Vec::new();
    for (path, gpa) in images {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("--memory {shown}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("--memory {shown}: {e}"))?
            .len();
        if len == 0 {
            return Err(format!("--memory {shown}: the image is empty"));
        }
        let len = usize::try_from(len).map_err(|_| format!("--memory {shown}: too large"))?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("--memory {shown}: cannot map it: {e}"))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(*gpa)).ok_or_else(|| {
            format!("--memory {shown}@{gpa:#x}: the range passes the end of the address space")
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| format!("--memory: the images overlap or are unusable: {e}"))
}

/// Decodes the tables the arguments describe.
pub fn dump(args: &DumpArgs) -> Result<Decoded, String> {
    let mem = map_images(&args.memory)?;
    let mut regs = ItsRegs::default();
    regs.baser[0] = args.baser0;
    regs.baser[1] = args.baser1;
    let max_lpi = 1u32 << args.lpi_id_bits;
    Ok(tables::decode(&regs, args.cpus as usize, max_lpi, &mem))
}
