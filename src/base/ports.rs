//! Sandbox ports with a meaning of their own.

/// The sandbox daemon's own port: toolbox traffic goes here in direct mode.
pub const TOOLBOX_PORT: u16 = 2280;
/// Ports that always require authentication and never get the preview warning.
pub const RESERVED_PORTS: [u16; 3] = [TOOLBOX_PORT, 22222, 33333];

pub fn is_reserved_port(port: u16) -> bool {
    RESERVED_PORTS.contains(&port)
}
