//! Loading a Linux kernel and writing the structures it is entered with:
//! the zero page (`boot_params`) for the 64-bit boot protocol, or
//! `hvm_start_info` for PVH.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::layout::{
    MemoryLayout, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START,
    PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::EntryMode;

/// `boot_params.hdr.boot_flag`
const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS"
const HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags`: the kernel is loaded high.
const LOADED_HIGH: u8 = 0x1;
/// `xloadflags`: the kernel has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 0x1;
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// `hvm_start_info.magic`
const PVH_MAGIC: u32 = 0x336e_c578;
/// Default `initrd_addr_max` for old protocols.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Why a kernel or initramfs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Neither an ELF nor a bzImage.
    #[error("not a Linux kernel: {0}")]
    NotAKernel(String),
    /// A bzImage too old or without a 64-bit entry.
    #[error("bzImage boot protocol {version:#x} with xloadflags {xloadflags:#x} has no 64-bit entry (need protocol >= 2.12 and XLF_KERNEL_64)")]
    NoLongModeEntry {
        /// Boot protocol version.
        version: u16,
        /// `xloadflags`
        xloadflags: u16,
    },
    /// The kernel does not fit in guest memory.
    #[error("kernel does not fit in guest memory: {0}")]
    KernelTooBig(String),
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error("initramfs of {size} bytes does not fit in guest memory below {limit:#x} (kernel ends at {kernel_end:#x}); give the guest more memory")]
    InitramfsTooBig {
        /// Size of the image.
        size: u64,
        /// Highest usable address.
        limit: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Bytes given (with the terminating NUL).
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The E820 map has more entries than the boot structure holds.
    #[error("memory map has {0} entries, more than the boot protocol can carry")]
    TooManyE820Entries(usize),
    /// Reading a file failed.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was read.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing guest memory failed.
    #[error("cannot write {0} into guest memory")]
    GuestMemory(&'static str),
}

/// The loaded kernel: where to start it and how.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point (guest-physical).
    pub entry: u64,
    /// Entry mode.
    pub mode: EntryMode,
    /// First byte after the kernel image in guest memory.
    pub end: u64,
    /// The bzImage setup header, if the kernel is a bzImage.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// Longest command line (with NUL) the kernel accepts.
    pub fn cmdline_max(&self) -> usize {
        match self.setup_header {
            Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
            _ => CMDLINE_MAX_SIZE,
        }
    }
}

/// Where the initramfs was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitramfs {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads `kernel` into `mem`: an ELF vmlinux (entered through its PVH note)
/// or a bzImage (64-bit boot protocol).
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, BootError> {
    let mut magic = [0u8; 4];
    kernel
        .seek(SeekFrom::Start(0))
        .and_then(|_| kernel.read(&mut magic))
        .map_err(|source| BootError::Io {
            what: "kernel",
            source,
        })?;
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| classify_load_error(e.to_string()))?;
        // A vmlinux is entered through its PVH note; an ELF without one is not
        // something we know how to start (and is usually not a kernel at all).
        let PvhBootCapability::PvhEntryPresent(entry) = r.pvh_boot_cap else {
            return Err(BootError::NotAKernel(
                "an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use a vmlinux built with CONFIG_PVH=y, or the bzImage".into(),
            ));
        };
        return Ok(LoadedKernel {
            entry: entry.0,
            mode: EntryMode::Pvh,
            end: r.kernel_end,
            setup_header: None,
        });
    }
    let hdr = read_setup_header(kernel)?;
    let r = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| classify_load_error(e.to_string()))?;
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < MIN_BZIMAGE_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::NoLongModeEntry {
            version,
            xloadflags,
        });
    }
    Ok(LoadedKernel {
        entry: r.kernel_load.0 + 0x200,
        mode: EntryMode::Linux64,
        end: r.kernel_end,
        setup_header: r.setup_header.or(Some(hdr)),
    })
}

fn classify_load_error(msg: String) -> BootError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("memory") || lower.contains("overflow") || lower.contains("start address") {
        BootError::KernelTooBig(msg)
    } else {
        BootError::NotAKernel(msg)
    }
}

/// Reads and checks the bzImage setup header (at 0x1f1, magic "HdrS" at 0x202).
fn read_setup_header(kernel: &mut File) -> Result<setup_header, BootError> {
    let mut hdr = SetupHeader::default();
    kernel
        .seek(SeekFrom::Start(0x1f1))
        .and_then(|_| kernel.read_exact(hdr.as_mut_slice()))
        .map_err(|_| {
            BootError::NotAKernel(
                "neither an ELF vmlinux nor a bzImage (too short for a bzImage header)".into(),
            )
        })?;
    let magic = hdr.0.header;
    let boot_flag = hdr.0.boot_flag;
    if magic != HDR_MAGIC || boot_flag != BOOT_FLAG {
        return Err(BootError::NotAKernel(
            "neither an ELF vmlinux nor a bzImage (no ELF magic, no bzImage 'HdrS' header)".into(),
        ));
    }
    Ok(hdr.0)
}

/// Copies `initramfs` into guest memory at the highest page-aligned address
/// below the kernel's limit, above the kernel.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    initramfs: &mut File,
) -> Result<LoadedInitramfs, BootError> {
    let size = initramfs
        .seek(SeekFrom::End(0))
        .and_then(|s| initramfs.seek(SeekFrom::Start(0)).map(|_| s))
        .map_err(|source| BootError::Io {
            what: "initramfs",
            source,
        })?;
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(if kernel.mode == EntryMode::Pvh {
            u64::MAX
        } else {
            DEFAULT_INITRD_ADDR_MAX
        });
    let limit = layout.low_size.min(addr_max.saturating_add(1));
    let addr = limit.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel.end && size > 0 => a,
        _ => {
            return Err(BootError::InitramfsTooBig {
                size,
                limit,
                kernel_end: kernel.end,
            })
        }
    };
    mem.read_volatile_from(GuestAddress(addr), initramfs, size as usize)
        .map_err(|_| BootError::GuestMemory("initramfs"))?;
    Ok(LoadedInitramfs { addr, size })
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > max {
        return Err(BootError::CmdlineTooLong { len, max });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_START))
        .and_then(|_| mem.write_obj(0u8, GuestAddress(CMDLINE_START + cmdline.len() as u64)))
        .map_err(|_| BootError::GuestMemory("command line"))
}

/// Everything the boot structures point at.
#[derive(Debug, Clone)]
pub struct BootInfo<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// Length of the command line written at [`CMDLINE_START`], without NUL.
    pub cmdline_len: usize,
    /// The initramfs, if any.
    pub initramfs: Option<LoadedInitramfs>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Guest-physical address of the ACPI RSDP.
    pub rsdp: u64,
}

/// Builds the zero page for the 64-bit boot protocol.
pub fn build_zero_page(info: &BootInfo) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(h) = info.kernel.setup_header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some(initrd) = info.initramfs {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp;
    if info.e820.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(info.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = info.e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    let params = BootParams(build_zero_page(info)?);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::GuestMemory("zero page"))
}

/// Builds `hvm_start_info` and its memory map for PVH.
pub fn build_pvh_start_info(
    info: &BootInfo,
) -> Result<(hvm_start_info, Vec<hvm_memmap_table_entry>), BootError> {
    if info.e820.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(info.e820.len()));
    }
    let memmap = info
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect::<Vec<_>>();
    let start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(info.initramfs.is_some()),
        modlist_paddr: if info.initramfs.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: info.rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    Ok((start, memmap))
}

/// Writes `hvm_start_info`, the module list and the memory map.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    let (start, memmap) = build_pvh_start_info(info)?;
    mem.write_obj(StartInfo(start), GuestAddress(PVH_INFO_START))
        .map_err(|_| BootError::GuestMemory("PVH start info"))?;
    if let Some(initrd) = info.initramfs {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(module), GuestAddress(PVH_MODLIST_START))
            .map_err(|_| BootError::GuestMemory("PVH module list"))?;
    }
    for (i, e) in memmap.into_iter().enumerate() {
        mem.write_obj(
            MemmapEntry(e),
            GuestAddress(PVH_MEMMAP_START + 24 * i as u64),
        )
        .map_err(|_| BootError::GuestMemory("PVH memory map"))?;
    }
    Ok(())
}

macro_rules! byte_valued {
    ($wrapper:ident, $inner:ty) => {
        #[derive(Clone, Copy, Default)]
        #[repr(transparent)]
        struct $wrapper($inner);
        // SAFETY: the wrapped type is a plain-old-data boot-protocol structure
        // generated by bindgen: integers and arrays of integers only, with no
        // references or invalid bit patterns, so any byte sequence is a valid value.
        unsafe impl ByteValued for $wrapper {}
    };
}
byte_valued!(BootParams, boot_params);
byte_valued!(SetupHeader, setup_header);
byte_valued!(StartInfo, hvm_start_info);
byte_valued!(ModlistEntry, hvm_modlist_entry);
byte_valued!(MemmapEntry, hvm_memmap_table_entry);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::e820;
    use std::io::Write;

    fn info<'a>(kernel: &'a LoadedKernel, map: &'a [E820Entry]) -> BootInfo<'a> {
        BootInfo {
            kernel,
            cmdline_len: 12,
            initramfs: Some(LoadedInitramfs {
                addr: 0x7f0_0000,
                size: 0x1234,
            }),
            e820: map,
            rsdp: 0xe0000,
        }
    }

    fn pvh_kernel() -> LoadedKernel {
        LoadedKernel {
            entry: 0x100_04a0,
            mode: EntryMode::Pvh,
            end: 0x200_0000,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_fields() {
        let map = e820::build(&MemoryLayout::new(128 << 20));
        let k = LoadedKernel {
            mode: EntryMode::Linux64,
            ..pvh_kernel()
        };
        let p = build_zero_page(&info(&k, &map)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries as usize, map.len());
        let first = p.e820_table[0];
        assert_eq!(
            ({ first.addr }, { first.size }, { first.r#type }),
            (0, 0x9fc00, 1)
        );
        // The zero page is exactly one page: the layout constants depend on it.
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    }

    #[test]
    fn pvh_start_info_fields() {
        let map = e820::build(&MemoryLayout::new(128 << 20));
        let k = pvh_kernel();
        let (s, mm) = build_pvh_start_info(&info(&k, &map)).unwrap();
        assert_eq!(s.magic, PVH_MAGIC);
        assert_eq!(s.version, 1);
        assert_eq!((s.nr_modules, s.modlist_paddr), (1, PVH_MODLIST_START));
        assert_eq!(s.cmdline_paddr, CMDLINE_START);
        assert_eq!(s.rsdp_paddr, 0xe0000);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(mm[0].addr, 0);
        let ecam = mm.last().unwrap();
        assert_eq!(
            (ecam.addr, ecam.type_),
            (crate::x86_64::layout::PCI_ECAM_START, 2)
        );
    }

    #[test]
    fn pvh_writes_land_where_rbx_points() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let map = e820::build(&MemoryLayout::new(128 << 20));
        let k = pvh_kernel();
        write_pvh_start_info(&mem, &info(&k, &map)).unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(magic, PVH_MAGIC);
        let module_paddr: u64 = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module_paddr, 0x7f0_0000);
        let second_type: u32 = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24 + 16))
            .unwrap();
        assert_eq!(second_type, 2, "EBDA..1MiB is reserved");
    }

    #[test]
    fn cmdline_limits() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_cmdline(&mem, "console=ttyS0", 2048).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&mem, &"x".repeat(2048), 2048),
            Err(BootError::CmdlineTooLong {
                len: 2049,
                max: 2048
            })
        ));
        assert!(matches!(
            write_cmdline(&mem, "a\0b", 2048),
            Err(BootError::CmdlineNul)
        ));
    }

    fn temp_file(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "caravel-boot-test-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut f = temp_file(&[0x42; 4096]);
        assert!(matches!(
            load_kernel(&mem, &mut f),
            Err(BootError::NotAKernel(_))
        ));
        let mut empty = temp_file(&[]);
        assert!(matches!(
            load_kernel(&mem, &mut empty),
            Err(BootError::NotAKernel(_))
        ));
    }

    #[test]
    fn initramfs_goes_to_top_of_low_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let layout = MemoryLayout::new(0x100_0000);
        let k = LoadedKernel {
            end: 0x20_0000,
            ..pvh_kernel()
        };
        let mut f = temp_file(&[7u8; 5000]);
        let r = load_initramfs(&mem, &layout, &k, &mut f).unwrap();
        assert_eq!(r.size, 5000);
        assert_eq!(r.addr % 4096, 0);
        assert!(r.addr + r.size <= 0x100_0000 && r.addr >= 0x100_0000 - 3 * 4096);
        let b: u8 = mem.read_obj(GuestAddress(r.addr + 4999)).unwrap();
        assert_eq!(b, 7);

        let mut big = temp_file(&vec![0u8; 0xf0_0000]);
        assert!(matches!(
            load_initramfs(&mem, &layout, &k, &mut big),
            Err(BootError::InitramfsTooBig { .. })
        ));
    }
}
