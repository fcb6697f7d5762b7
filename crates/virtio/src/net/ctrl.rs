//! The control queue (virtio 1.2 §5.1.6.5): multi-queue pair count and
//! receive offloads. Every request is answered at once (Linux waits
//! for the answer, spinning, from probe on); commands this device does not
//! offer but that change nothing here (receive filtering modes, VLAN
//! filters) are acknowledged, as drivers that send them regardless expect.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

use super::backend::TapQueue;
use super::{features as f, guest_offloads_to_tun, GUEST_OFFLOAD_BITS};

const OK: u8 = 0;
const ERR: u8 = 1;

const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const CLASS_VLAN: u8 = 2;
const CLASS_ANNOUNCE: u8 = 3;
const CLASS_MQ: u8 = 4;
const CLASS_GUEST_OFFLOADS: u8 = 5;
const MQ_VQ_PAIRS_SET: u8 = 0;
const GUEST_OFFLOADS_SET: u8 = 0;

/// Longest command read: class, command and the largest argument answered
/// (a u64); longer requests (MAC tables) are only parsed this far.
const MAX_COMMAND: usize = 64;

/// What the control queue knows of the device.
pub(crate) struct Control {
    /// Negotiated features.
    pub acked: u64,
    /// Queue pairs offered.
    pub max_pairs: u16,
    /// The receive offloads in force (`VIRTIO_NET_F_GUEST_*` bits).
    pub guest_offloads: u64,
}

impl Control {
    /// Answers one request. Returns the used length (1 with an answer
    /// written, 0 for a chain with no room for it).
    pub(crate) fn handle<M: GuestMemory>(
        &mut self,
        chain: DescriptorChain<&M>,
        mem: &M,
        tap: &dyn TapQueue,
    ) -> u32 {
        let mut cmd = [0u8; MAX_COMMAND];
        let mut len = 0usize;
        let mut ack_at = None;
        for d in chain {
            if d.is_write_only() {
                ack_at.get_or_insert(d.addr());
                continue;
            }
            let n = (d.len() as usize).min(MAX_COMMAND - len);
            if n > 0 && mem.read_slice(&mut cmd[len..len + n], d.addr()).is_ok() {
                len += n;
            }
        }
        let answer = if len < 2 {
            devices::warn_ratelimited!("virtio-net: control request without a header");
            ERR
        } else {
            self.command(cmd[0], cmd[1], &cmd[2..len], tap)
        };
        match ack_at {
            Some(addr) if mem.write_obj(answer, addr).is_ok() => 1,
            _ => {
                devices::warn_ratelimited!(
                    "virtio-net: control request without room for the answer"
                );
                0
            }
        }
    }

    fn command(&mut self, class: u8, cmd: u8, data: &[u8], tap: &dyn TapQueue) -> u8 {
        match (class, cmd) {
            (CLASS_MQ, MQ_VQ_PAIRS_SET) => {
                let Some(pairs) = data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]])) else {
                    return ERR;
                };
                // Every pair's worker runs regardless: a driver using fewer
                // pairs leaves the others idle.
                if self.acked & f::MQ != 0 && (1..=self.max_pairs).contains(&pairs) {
                    OK
                } else {
                    ERR
                }
            }
            (CLASS_GUEST_OFFLOADS, GUEST_OFFLOADS_SET) => {
                let Some(bits) = data
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                else {
                    return ERR;
                };
                let allowed = self.acked & GUEST_OFFLOAD_BITS;
                if self.acked & f::CTRL_GUEST_OFFLOADS == 0 || bits & !allowed != 0 {
                    return ERR;
                }
                match tap.set_offload(guest_offloads_to_tun(bits)) {
                    Ok(()) => {
                        self.guest_offloads = bits;
                        OK
                    }
                    Err(e) => {
                        devices::warn_ratelimited!("virtio-net: TUNSETOFFLOAD failed: {e}");
                        ERR
                    }
                }
            }
            // Nothing filters here: every mode and VLAN is already received.
            (CLASS_RX, _) | (CLASS_VLAN, _) | (CLASS_ANNOUNCE, _) => OK,
            (CLASS_MAC, _) => ERR,
            _ => {
                devices::warn_ratelimited!("virtio-net: unknown control command {class}.{cmd}");
                ERR
            }
        }
    }
}
