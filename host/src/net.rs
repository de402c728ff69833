//! Network address helpers shared by configuration and the clients.

/// `localhost` or a loopback address (IPv6 with or without brackets): the
/// only hosts reached over plain HTTP unless configured otherwise.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
