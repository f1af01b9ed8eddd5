//! Ports for processes this one starts (the bench's separate processes, the
//! fault tests' deployments), picked before the process binds them.

use std::sync::Mutex;

/// Ports handed out by this process, never handed out twice.
static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
/// The lowest port picked.
const LOWEST: u16 = 10_000;

/// A port free now for another process to listen on, never handed out
/// twice by this one. It is taken below the kernel's ephemeral range: a
/// port the kernel picked (`bind(0)`) would be released here before the
/// other process binds it, and meanwhile anything binding port 0 (a metrics
/// listener) or connecting out could be given the same one ("Address
/// already in use").
pub fn free_port() -> std::io::Result<u16> {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if ephemeral_from > LOWEST + 1_000 {
        let span = u32::from(ephemeral_from - LOWEST);
        let start = u32::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[0; 4])) % span;
        for step in 0..span {
            let Ok(port) = u16::try_from((start + step) % span).map(|offset| LOWEST + offset) else { continue };
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    given.push(port);
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_given_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "a port was given twice: {ports:?}");
        for port in ports {
            assert!(port >= LOWEST);
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
