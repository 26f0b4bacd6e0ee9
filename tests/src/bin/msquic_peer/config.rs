//! MsQuic registration, settings and credentials for both roles, from the shared flags.

use std::path::Path;

use anyhow::{anyhow, Result};
use msquic::{
    BufferRef, CertificateFile, Configuration, Credential, CredentialConfig, CredentialFlags,
    Registration, RegistrationConfig, Settings,
};
use quench_tests::tls::{CertFiles, Verify};

/// Idle timeout both roles advertise (the other peers use 30 s too).
const IDLE_TIMEOUT_MS: u64 = 30_000;
/// Concurrent bidirectional streams a server lets each client open (the interop tests run
/// up to 100 at once).
const PEER_BIDI_STREAMS: u16 = 1000;

pub fn registration() -> Result<Registration> {
    let config = RegistrationConfig::new().set_app_name("msquic-peer".to_string());
    Registration::new(&config).map_err(|e| anyhow!("opening the MsQuic registration: {e}"))
}

fn alpn_refs(alpns: &[String]) -> Vec<BufferRef> {
    alpns.iter().map(|a| BufferRef::from(a.as_str())).collect()
}

/// `early_data`: tickets allow 0-RTT and early data is accepted.
pub fn server_configuration(
    reg: &Registration,
    alpns: &[String],
    cert: &CertFiles,
    versions: &[u32],
    early_data: bool,
) -> Result<Configuration> {
    let resumption = if early_data {
        msquic::ServerResumptionLevel::ResumeAndZerortt
    } else {
        msquic::ServerResumptionLevel::ResumeOnly
    };
    let settings = Settings::new()
        .set_IdleTimeoutMs(IDLE_TIMEOUT_MS)
        .set_PeerBidiStreamCount(PEER_BIDI_STREAMS)
        .set_ServerResumptionLevel(resumption)
        .set_DatagramReceiveEnabled();
    let config = Configuration::open(reg, &alpn_refs(alpns), Some(&settings))
        .map_err(|e| anyhow!("opening the server configuration: {e}"))?;
    let credential = Credential::CertificateFile(CertificateFile::new(
        path_string(&cert.key)?,
        path_string(&cert.cert)?,
    ));
    config
        .load_credential(&CredentialConfig::new().set_credential(credential))
        .map_err(|e| {
            anyhow!(
                "loading certificate {} and key {}: {e}",
                cert.cert.display(),
                cert.key.display()
            )
        })?;
    crate::versions::apply(&config, versions)?;
    Ok(config)
}

pub fn client_configuration(
    reg: &Registration,
    alpn: &str,
    verify: Verify<'_>,
    versions: &[u32],
) -> Result<Configuration> {
    let mut settings = Settings::new().set_IdleTimeoutMs(IDLE_TIMEOUT_MS);
    if alpn == "echo" {
        settings = settings.set_DatagramReceiveEnabled();
    }
    let config = Configuration::open(reg, &alpn_refs(&[alpn.to_string()]), Some(&settings))
        .map_err(|e| anyhow!("opening the client configuration: {e}"))?;
    let credential = match verify {
        Verify::Ca(path) => {
            CredentialConfig::new_client().set_ca_certificate_file(path_string(path)?)
        }
        Verify::Insecure => CredentialConfig::new_client().set_credential_flags(
            CredentialFlags::CLIENT | CredentialFlags::NO_CERTIFICATE_VALIDATION,
        ),
    };
    config
        .load_credential(&credential)
        .map_err(|e| anyhow!("loading the client credential: {e}"))?;
    crate::versions::apply(&config, versions)?;
    Ok(config)
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}
