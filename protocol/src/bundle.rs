//! Module bundles as the agent keeps them: zips of stored (uncompressed)
//! members, rebuilt from the [`Member`]s of a [`crate::Code`] and their
//! contents.
//!
//! Ansible's bundles deflate every member. Deflated data does not compress
//! further, so the controller sends the members' plain contents, all new
//! ones in one LZMA stream ([`crate::lzma`]), and the agent writes them
//! back as a zip of its own: the same files with the same names, times,
//! modes and checksums, which Python's `zipimport` and `zipfile` read as
//! they read Ansible's.

use crate::Member;

const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const END_SIG: &[u8; 4] = b"PK\x05\x06";
/// Zip 2.0 made on Unix, as Python's `zipfile` writes it: the external
/// attributes then carry a Unix mode.
const MADE_BY: u16 = 3 << 8 | 20;
const NEEDED: u16 = 20;
/// General purpose flag: the name is UTF-8.
const UTF8_NAME: u16 = 1 << 11;

/// Bytes a stored zip spends on each member besides its name and data
/// (local header and directory entry), and once at its end.
const LOCAL_LEN: usize = 30;
const PER_MEMBER: usize = LOCAL_LEN + 46;
const END_LEN: usize = 22;

/// The CRC-32 (ISO-HDLC, as zip uses) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Where each member's data starts in the stored zip of `members`: after
/// the data before it and its own local header and name.
pub fn data_offsets(members: &[Member]) -> impl Iterator<Item = usize> + '_ {
    members.iter().scan(0usize, |at, m| {
        let start = *at + LOCAL_LEN + m.name.len();
        *at = start + m.size as usize;
        Some(start)
    })
}

/// Length of the stored zip of `members`.
pub fn stored_len(members: &[Member]) -> usize {
    members
        .iter()
        .map(|m| PER_MEMBER + 2 * m.name.len() + m.size as usize)
        .sum::<usize>()
        + END_LEN
}

/// Writes the zip of `members`, storing each member's data as `data`
/// yields it (called once per member, in order, with the member and where
/// its data starts in the zip). `None` when a zip cannot hold them (65,535
/// members or more, 4 GiB or more, a name over 64 KiB) or `data` fails or
/// yields the wrong number of bytes for a member.
pub fn write_stored<'m, E>(
    members: &'m [Member],
    mut data: impl FnMut(usize, &'m Member, &mut Vec<u8>) -> Result<(), E>,
) -> Result<Option<Vec<u8>>, E> {
    let len = stored_len(members);
    if members.len() >= u16::MAX as usize
        || u32::try_from(len).is_err()
        || members.iter().any(|m| m.name.len() > u16::MAX as usize)
    {
        return Ok(None);
    }
    let mut zip = Vec::with_capacity(len);
    let mut offsets = Vec::with_capacity(members.len());
    for m in members {
        offsets.push(zip.len() as u32);
        zip.extend_from_slice(LOCAL_SIG);
        zip.extend_from_slice(&NEEDED.to_le_bytes());
        header_fields(&mut zip, m);
        zip.extend_from_slice(m.name.as_bytes());
        let start = zip.len();
        data(start, m, &mut zip)?;
        if zip.len() - start != m.size as usize {
            return Ok(None);
        }
    }
    let dir_at = zip.len() as u32;
    for (m, offset) in members.iter().zip(offsets) {
        zip.extend_from_slice(CENTRAL_SIG);
        zip.extend_from_slice(&MADE_BY.to_le_bytes());
        zip.extend_from_slice(&NEEDED.to_le_bytes());
        header_fields(&mut zip, m);
        // Comment length, disk number, internal attributes.
        zip.extend_from_slice(&[0; 6]);
        zip.extend_from_slice(&m.attrs.to_le_bytes());
        zip.extend_from_slice(&offset.to_le_bytes());
        zip.extend_from_slice(m.name.as_bytes());
    }
    let dir_len = zip.len() as u32 - dir_at;
    let count = (members.len() as u16).to_le_bytes();
    zip.extend_from_slice(END_SIG);
    zip.extend_from_slice(&[0; 4]);
    zip.extend_from_slice(&count);
    zip.extend_from_slice(&count);
    zip.extend_from_slice(&dir_len.to_le_bytes());
    zip.extend_from_slice(&dir_at.to_le_bytes());
    zip.extend_from_slice(&[0; 2]);
    debug_assert_eq!(zip.len(), len);
    Ok(Some(zip))
}

/// The fields local header and directory entry share: flags, method
/// (stored), time, date, checksum, sizes, name length, extra length.
fn header_fields(zip: &mut Vec<u8>, m: &Member) {
    let flags = if m.name.is_ascii() { 0 } else { UTF8_NAME };
    zip.extend_from_slice(&flags.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip.extend_from_slice(&(m.time as u16).to_le_bytes());
    zip.extend_from_slice(&((m.time >> 16) as u16).to_le_bytes());
    zip.extend_from_slice(&m.crc.to_le_bytes());
    zip.extend_from_slice(&m.size.to_le_bytes());
    zip.extend_from_slice(&m.size.to_le_bytes());
    zip.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Blob;

    #[test]
    fn crc32_is_zips() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn lengths_add_up() {
        let members: Vec<Member> = [("a.py", 3), ("dir/é.py", 0)]
            .iter()
            .map(|&(name, size)| Member {
                name: name.into(),
                key: Blob(vec![0; 16]),
                size,
                crc: 0,
                time: 0,
                attrs: 0,
                packed: false,
            })
            .collect();
        let zip = write_stored(&members, |_, m, out| {
            out.extend(std::iter::repeat_n(b'x', m.size as usize));
            Ok::<_, ()>(())
        })
        .expect("writes")
        .expect("fits");
        assert_eq!(zip.len(), stored_len(&members));
        let starts: Vec<usize> = data_offsets(&members).collect();
        assert_eq!(
            starts,
            [LOCAL_LEN + 4, LOCAL_LEN * 2 + 4 + 3 + "dir/é.py".len()]
        );
        assert_eq!(&zip[..4], LOCAL_SIG);
        // Wrong data for a member: no zip.
        let short = write_stored(&members, |_, _, _| Ok::<_, ()>(())).expect("runs");
        assert!(short.is_none());
    }
}
