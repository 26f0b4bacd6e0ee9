//! QUIC versions for MsQuic (`--quic-version`): which it accepts and offers, in preference
//! order, and its compatible version negotiation (RFC 9368), which it only does when told.

use std::ffi::c_void;

use anyhow::{anyhow, bail, Result};
use msquic::{Api, Configuration};

pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC v2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// MsQuic's private `QUIC_PARAM_CONFIGURATION_VERSION_NEG_ENABLED` and
/// `QUIC_PARAM_GLOBAL_VERSION_NEGOTIATION_ENABLED` (msquicp.h): turn on the
/// version_information transport parameter and compatible negotiation.
const PARAM_CONFIGURATION_VERSION_NEG_ENABLED: u32 = 0x8300_0001;
const PARAM_GLOBAL_VERSION_NEGOTIATION_ENABLED: u32 = 0x8100_0003;

/// `1`, `2` or a version number in hex (`0x…`).
pub fn parse(text: &str) -> Result<u32> {
    match text {
        "1" => Ok(VERSION_1),
        "2" => Ok(VERSION_2),
        hex => {
            let digits = hex
                .strip_prefix("0x")
                .ok_or_else(|| anyhow!("QUIC version {hex:?}: expected 1, 2 or 0x…"))?;
            u32::from_str_radix(digits, 16).map_err(|e| anyhow!("QUIC version {hex:?}: {e}"))
        }
    }
}

/// Restricts `config` to `versions` (the first is a client's first flight; a server prefers
/// earlier ones) and turns on compatible version negotiation between them. Empty: MsQuic's
/// defaults (v1 first, no negotiation extension).
pub fn apply(config: &Configuration, versions: &[u32]) -> Result<()> {
    // SAFETY: the handle is only passed back to MsQuic while `config` is alive.
    let handle = unsafe { config.as_raw() };
    apply_to(handle, versions, PARAM_CONFIGURATION_VERSION_NEG_ENABLED)
}

/// The same for the whole process. A server needs this as well: MsQuic picks a server's
/// compatible version from the global settings, before a connection has its configuration
/// (core/connection.c, `QuicConnProcessPeerVersionNegotiationTP`).
pub fn apply_globally(versions: &[u32]) -> Result<()> {
    apply_to(
        std::ptr::null_mut(),
        versions,
        PARAM_GLOBAL_VERSION_NEGOTIATION_ENABLED,
    )
}

fn apply_to(handle: msquic::ffi::HQUIC, versions: &[u32], enable_param: u32) -> Result<()> {
    if versions.is_empty() {
        return Ok(());
    }
    if versions.iter().any(|v| ![VERSION_1, VERSION_2].contains(v)) {
        bail!("MsQuic speaks QUIC versions 1 and 2 only");
    }
    let settings_param = if handle.is_null() {
        msquic::ffi::QUIC_PARAM_GLOBAL_VERSION_SETTINGS
    } else {
        msquic::ffi::QUIC_PARAM_CONFIGURATION_VERSION_SETTINGS
    };
    let len = versions.len() as u32;
    let settings = msquic::ffi::QUIC_VERSION_SETTINGS {
        AcceptableVersions: versions.as_ptr(),
        OfferedVersions: versions.as_ptr(),
        FullyDeployedVersions: versions.as_ptr(),
        AcceptableVersionsLength: len,
        OfferedVersionsLength: len,
        FullyDeployedVersionsLength: len,
    };
    let enabled: u8 = 1;
    // SAFETY: `handle` is a live configuration or null (global); both buffers are valid
    // for their lengths during the calls, and MsQuic copies the version lists.
    unsafe {
        Api::set_param(
            handle,
            settings_param,
            std::mem::size_of_val(&settings) as u32,
            &settings as *const _ as *const c_void,
        )
        .map_err(|e| anyhow!("setting QUIC versions: {e}"))?;
        Api::set_param(
            handle,
            enable_param,
            1,
            &enabled as *const u8 as *const c_void,
        )
        .map_err(|e| anyhow!("enabling compatible version negotiation: {e}"))?;
    }
    Ok(())
}

/// The version a connection ended up in.
pub fn of_connection(conn: &msquic::Connection) -> Option<u32> {
    // SAFETY: QUIC_PARAM_CONN_QUIC_VERSION is a u32, which `get_param_auto` reads into.
    unsafe { Api::get_param_auto::<u32>(conn.as_raw(), msquic::ffi::QUIC_PARAM_CONN_QUIC_VERSION) }
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse("1").unwrap(), VERSION_1);
        assert_eq!(parse("2").unwrap(), VERSION_2);
        assert_eq!(parse("0x6b3343cf").unwrap(), VERSION_2);
        assert!(parse("3").is_err());
        assert!(parse("0xzz").is_err());
    }
}
