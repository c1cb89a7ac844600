//! The classic BPF program attached to every responder socket: the kernel hands userspace only ARP requests
//! and ICMPv6 Neighbor Solicitations (without extension headers) that were received, not sent, on the
//! interface. Everything else (the interface's whole traffic, with an `ETH_P_ALL` socket) is dropped in the
//! kernel before it is queued.

/// One classic BPF instruction: (code, jump if true, jump if false, constant).
pub type Insn = (u16, u8, u8, u32);

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// `SKF_AD_OFF + SKF_AD_PKTTYPE`: loads the packet type (host, broadcast, multicast, other host, outgoing).
pub const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
/// `PACKET_OUTGOING`.
pub const PACKET_OUTGOING: u32 = 4;
/// Bytes of an accepted frame handed to userspace: more than any solicitation we answer needs.
pub const SNAP_LEN: u32 = 2048;

/// The program. Offsets are those of an untagged Ethernet frame (VLAN tags are stripped into metadata by the
/// kernel before packet sockets see the frame; on a VLAN interface the frame is untagged anyway).
pub const PROGRAM: [Insn; 13] = [
    (LD_W_ABS, 0, 0, AD_PKTTYPE),    // 0: A = pkttype
    (JEQ_K, 10, 0, PACKET_OUTGOING), // 1: our own transmissions -> drop
    (LD_H_ABS, 0, 0, 12),            // 2: A = ethertype
    (JEQ_K, 0, 2, 0x0806),           // 3: ARP? else -> 6
    (LD_H_ABS, 0, 0, 20),            // 4: A = ARP opcode
    (JEQ_K, 5, 6, 1),                // 5: request -> accept, else drop
    (JEQ_K, 0, 5, 0x86dd),           // 6: IPv6? else drop
    (LD_B_ABS, 0, 0, 20),            // 7: A = next header
    (JEQ_K, 0, 3, 58),               // 8: ICMPv6? else drop
    (LD_B_ABS, 0, 0, 54),            // 9: A = ICMPv6 type
    (JEQ_K, 0, 1, 135),              // 10: Neighbor Solicitation -> accept, else drop
    (RET_K, 0, 0, SNAP_LEN),         // 11: accept
    (RET_K, 0, 0, 0),                // 12: drop
];

/// The program in `socket2`'s form.
pub fn program() -> Vec<socket2::SockFilter> {
    PROGRAM.iter().map(|&(code, jt, jf, k)| socket2::SockFilter::new(code, jt, jf, k)).collect()
}

/// Runs the program over a frame the way the kernel does (the subset of classic BPF it uses); `Some(n)` is
/// the number of bytes accepted, `None` an out-of-bounds load (the kernel drops the frame then too). Used by
/// the tests to check the program against real frames.
pub fn run(frame: &[u8], pkttype: u32) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let &(code, jt, jf, k) = PROGRAM.get(pc)?;
        pc += 1;
        match code {
            LD_W_ABS if k == AD_PKTTYPE => a = pkttype,
            LD_W_ABS => {
                let b = frame.get(k as usize..k as usize + 4)?;
                a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            }
            LD_H_ABS => {
                let b = frame.get(k as usize..k as usize + 2)?;
                a = u32::from(u16::from_be_bytes([b[0], b[1]]));
            }
            LD_B_ABS => a = u32::from(*frame.get(k as usize)?),
            JEQ_K => pc += usize::from(if a == k { jt } else { jf }),
            RET_K => return Some(k),
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::{self, MAX_FRAME};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const HOST: u32 = 0;
    const BROADCAST: u32 = 1;
    const MULTICAST: u32 = 2;

    #[test]
    fn accepts_arp_requests_and_solicitations_only() {
        let mac = [2, 0, 0, 0, 0, 1];
        let v4 = Ipv4Addr::new(192, 0, 2, 1);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut buf = [0u8; MAX_FRAME];
        // A gratuitous ARP is a request: accepted (userspace tells it apart), except when we send it.
        let n = wire::gratuitous_arp(&mut buf, mac, v4);
        assert_eq!(run(&buf[..n], BROADCAST), Some(SNAP_LEN));
        assert_eq!(run(&buf[..n], PACKET_OUTGOING), Some(0));
        let n = wire::arp_reply(&mut buf, mac, v4, [2, 0, 0, 0, 0, 2], v4);
        assert_eq!(run(&buf[..n], HOST), Some(0));
        // Advertisements are not solicitations.
        let n = wire::unsolicited_na(&mut buf, mac, v6);
        assert_eq!(run(&buf[..n], MULTICAST), Some(0));
        // A solicitation: the same frame with type 135.
        buf[14 + 40] = 135;
        assert_eq!(run(&buf[..n], MULTICAST), Some(SNAP_LEN));
        buf[14 + 6] = 17;
        assert_eq!(run(&buf[..n], MULTICAST), Some(0));
        // IPv4 and short frames.
        buf[12] = 0x08;
        buf[13] = 0x00;
        assert_eq!(run(&buf[..n], HOST), Some(0));
        assert_eq!(run(&buf[..13], HOST), None);
    }

    #[test]
    fn program_converts() {
        assert_eq!(program().len(), PROGRAM.len());
    }
}
