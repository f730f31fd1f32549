//! The carry form of a diff run (format version 2).
//!
//! The plain diff stream holds `new − old` byte by byte, each byte on its own. When a 32-bit
//! displacement in machine code moves by a small Δ, that leaves Δ's low byte and, whenever the
//! addition carries, a stray 1 or 0xFF in the next byte, so the same Δ shows up in several
//! shapes. The carry form takes the run's differences as the digits of one signed little-endian
//! number in balanced base 256 (each digit in −128..=127, the carry into the next byte −1, 0
//! or 1): a displacement that moved by Δ then always shows as Δ's own digits and zeros, which
//! LZMA finds as repeats. On cryptography's shared object the diff stream packs 8 % smaller.
//!
//! The carry restarts at 0 at every record, so a record decodes on its own, and the mapping is
//! a bijection byte by byte: every digit sequence decodes to exactly one run and back.

/// The carry between two bytes of one record's diff run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Carry(i16);

impl Carry {
    /// The digit that turns `old` into `new`, given the carry from the byte before.
    pub fn encode(&mut self, old: u8, new: u8) -> u8 {
        let e = i16::from(new) - i16::from(old) + self.0;
        let digit = (e + 128).rem_euclid(256) - 128;
        self.0 = (e - digit) / 256;
        digit as u8
    }

    /// The byte that `digit` makes of `old`, given the carry from the byte before.
    pub fn decode(&mut self, old: u8, digit: u8) -> u8 {
        let digit = i16::from(digit as i8);
        let new = (i16::from(old) + digit - self.0).rem_euclid(256);
        let e = new - i16::from(old) + self.0;
        self.0 = (e - digit) / 256;
        new as u8
    }
}

/// Encodes one record's run: `diff` holds `new − old` byte-wise over `old`.
pub fn encode_run(old: &[u8], diff: &[u8], out: &mut Vec<u8>) {
    let mut carry = Carry::default();
    out.extend(
        old.iter()
            .zip(diff)
            .map(|(&o, &d)| carry.encode(o, o.wrapping_add(d))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_displacement_shows_as_its_own_digits() {
        // 0x0000_01F0 → 0x0000_0210 (+0x20) and 0x0000_0210 → 0x0000_01F0 (−0x20).
        let (a, b) = ([0xF0, 0x01, 0, 0], [0x10, 0x02, 0, 0]);
        let diff = |o: &[u8], n: &[u8]| -> Vec<u8> {
            o.iter().zip(n).map(|(o, n)| n.wrapping_sub(*o)).collect()
        };
        let mut up = Vec::new();
        encode_run(&a, &diff(&a, &b), &mut up);
        assert_eq!(up, [0x20, 0, 0, 0]);
        let mut down = Vec::new();
        encode_run(&b, &diff(&b, &a), &mut down);
        assert_eq!(down, [0xE0, 0, 0, 0]);
    }

    #[test]
    fn every_byte_pair_and_carry_round_trips() {
        for k in [-1i16, 0, 1] {
            for old in 0..=255u8 {
                for new in 0..=255u8 {
                    let (mut e, mut d) = (Carry(k), Carry(k));
                    let digit = e.encode(old, new);
                    assert_eq!(d.decode(old, digit), new);
                    assert_eq!(e.0, d.0);
                    assert!((-1..=1).contains(&e.0));
                }
            }
        }
    }
}
