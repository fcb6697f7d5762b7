//! VFIO ioctl numbers: `_IO(';', 100 + n)`, sizes travel in `argsz`.

/// `VFIO_TYPE`
const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;

const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}

/// VFIO_GET_API_VERSION
pub const GET_API_VERSION: u64 = io(0);
/// VFIO_CHECK_EXTENSION
pub const CHECK_EXTENSION: u64 = io(1);
/// VFIO_SET_IOMMU
pub const SET_IOMMU: u64 = io(2);
/// VFIO_GROUP_GET_STATUS
pub const GROUP_GET_STATUS: u64 = io(3);
/// VFIO_GROUP_SET_CONTAINER
pub const GROUP_SET_CONTAINER: u64 = io(4);
/// VFIO_GROUP_GET_DEVICE_FD (argument: the NUL-terminated device name)
pub const GROUP_GET_DEVICE_FD: u64 = io(6);
/// VFIO_DEVICE_GET_INFO
pub const DEVICE_GET_INFO: u64 = io(7);
/// VFIO_DEVICE_GET_REGION_INFO
pub const DEVICE_GET_REGION_INFO: u64 = io(8);
/// VFIO_DEVICE_GET_IRQ_INFO
pub const DEVICE_GET_IRQ_INFO: u64 = io(9);
/// VFIO_DEVICE_SET_IRQS
pub const DEVICE_SET_IRQS: u64 = io(10);
/// VFIO_DEVICE_RESET
pub const DEVICE_RESET: u64 = io(11);
/// VFIO_IOMMU_MAP_DMA
pub const IOMMU_MAP_DMA: u64 = io(13);
/// VFIO_IOMMU_UNMAP_DMA
pub const IOMMU_UNMAP_DMA: u64 = io(14);
/// VFIO_DEVICE_FEATURE
pub const DEVICE_FEATURE: u64 = io(17);
/// VFIO_DEVICE_BIND_IOMMUFD
pub const DEVICE_BIND_IOMMUFD: u64 = io(18);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_uapi() {
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(GROUP_GET_DEVICE_FD, 15210, "as vfio-ioctls asserts");
        assert_eq!(DEVICE_FEATURE, 0x3b75);
        assert_eq!(DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(DEVICE_BIND_IOMMUFD, 15222, "as vfio-ioctls asserts");
        assert_eq!((IOMMU_MAP_DMA, IOMMU_UNMAP_DMA), (0x3b71, 0x3b72));
    }

    #[test]
    fn struct_layouts_match_the_uapi() {
        use std::mem::{offset_of, size_of};
        use vfio_bindings::bindings::vfio::*;
        assert_eq!(size_of::<vfio_device_feature>(), 8);
        assert_eq!(size_of::<vfio_device_bind_iommufd>(), 24);
        assert_eq!(offset_of!(vfio_device_bind_iommufd, token_uuid_ptr), 16);
        assert_eq!(size_of::<vfio_irq_set>(), 20);
        assert_eq!(size_of::<vfio_iommu_type1_dma_map>(), 32);
    }
}
