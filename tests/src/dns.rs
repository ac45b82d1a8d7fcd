//! A minimal DNS responder for resolver tests: answers `A` queries for a
//! fixed set of names over UDP, `NXDOMAIN` for other names, and no answer
//! for other record types of known names.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers until dropped.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Serves `names` (lower case, without the trailing dot) on `addr`.
    pub fn start(addr: SocketAddr, names: HashMap<String, Ipv4Addr>) -> Result<Responder> {
        let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &names) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Ok(Responder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// The reply to one query, or `None` for what is not a single-question query.
fn answer(query: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 || u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(at + 2)?, *query.get(at + 3)?]);
    let question = &query[12..at + 4];
    let found = names.get(&labels.join("."));

    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&header[..2]); // the query's id
    let rd = header[2] & 0x01;
    let rcode = if found.is_some() { 0 } else { 3 }; // NXDOMAIN
    reply.extend_from_slice(&[0x84 | rd, 0x80 | rcode]); // response, authoritative
    let answers = match found {
        Some(_) if qtype == TYPE_A && qclass == CLASS_IN => 1u16,
        _ => 0,
    };
    for count in [1, answers, 0, 0] {
        reply.extend_from_slice(&u16::to_be_bytes(count));
    }
    reply.extend_from_slice(question);
    if let (1, Some(ip)) = (answers, found) {
        reply.extend_from_slice(&[0xc0, 12]); // the question's name
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes()); // ttl: never cached
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn answers_known_names_only() {
        let names = HashMap::from([("a.test".to_owned(), Ipv4Addr::new(10, 1, 2, 3))]);
        let r = answer(&query("A.test", TYPE_A), &names).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[10, 1, 2, 3]);

        let r = answer(&query("a.test", 28), &names).unwrap();
        assert_eq!((r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])), (0, 0));

        let r = answer(&query("b.test", TYPE_A), &names).unwrap();
        assert_eq!((r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])), (3, 0));

        assert!(answer(&[0; 5], &names).is_none());
    }
}
