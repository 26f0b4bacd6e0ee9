//! Loading the steering program (bpf/quench_xdp.bpf.c, compiled by build.rs), filling its
//! maps, attaching it to an interface through a BPF link, and reading its counters.
//!
//! Attaching through a link (not netlink) means the program detaches when the link fd
//! closes: on Drop, and also when a crashed process's fds are closed by the kernel. A
//! program left behind by something else attached the old netlink way is detached first
//! (logged), so a stale run never blocks a new one.

use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder};

use super::stats::{ProgramStats, STAT_COUNT};
use super::XdpError;
use crate::wire::steer::CidLayout;

/// The compiled program.
pub static PROGRAM_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/quench_xdp.bpf.o"));

// Must equal the QUENCH_* values in bpf/quench_xdp.h (checked by a test).
pub const MAX_WORKERS: u32 = 64;
pub const MAX_QUEUES: u32 = 256;
pub const MAX_PORTS: u32 = 16;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_CID_LEN: u32 = 20;
pub const MIN_INITIAL_DATAGRAM: u32 = 1200;
pub const SHORT_TAIL_MIN: u32 = 20;

/// How to attach to the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (fast; veth supports it).
    Native,
    /// In the generic network stack (works everywhere, slower, copy mode only).
    Generic,
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
}

/// Settings baked into the program before load.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSettings {
    pub layout: CidLayout,
    pub n_workers: u32,
    /// Drop Initial packets in datagrams under 1200 bytes (servers: RFC 9000 §14.1).
    pub drop_small_initial: bool,
}

/// `struct quench_config` in bpf/quench_xdp.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct QuenchConfig {
    cid_len: u32,
    worker_offset: u32,
    n_workers: u32,
    drop_small_initial: u32,
}

/// Makes the hash map `map` (key → 1, a set) hold exactly `keys`.
fn replace_set<const N: usize>(
    map: &MapHandle,
    keys: &[[u8; N]],
    name: &'static str,
) -> Result<(), XdpError> {
    let old: Vec<Vec<u8>> = map.keys().collect();
    for k in old {
        if !keys.iter().any(|n| n[..] == k[..]) {
            map.delete(&k).map_err(bpf_err(name))?;
        }
    }
    for k in keys {
        map.update(k, &[1], MapFlags::ANY).map_err(bpf_err(name))?;
    }
    Ok(())
}

/// `struct quench_local_addr`: the family (4 or 6, native endian), then the address,
/// an IPv4 one zero-padded.
fn local_addr_key(addr: IpAddr) -> [u8; 20] {
    let mut k = [0u8; 20];
    match addr {
        IpAddr::V4(v4) => {
            k[..4].copy_from_slice(&4u32.to_ne_bytes());
            k[4..8].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            k[..4].copy_from_slice(&6u32.to_ne_bytes());
            k[4..].copy_from_slice(&v6.octets());
        }
    }
    k
}

/// `struct quench_worker_info` / `struct quench_queue_owner`: two u32, the second the
/// "active" flag.
fn pair(a: u32, active: bool) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&a.to_ne_bytes());
    v[4..].copy_from_slice(&u32::from(active).to_ne_bytes());
    v
}

fn bpf_err(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    move |e| {
        if e.kind() == libbpf_rs::ErrorKind::PermissionDenied {
            XdpError::Permission(format!("{what}: {e}"))
        } else {
            XdpError::Bpf(format!("{what}: {e}"))
        }
    }
}

/// The loaded program and handles on its maps. Detaches from the interface on Drop.
pub struct XdpProgram {
    object: Object,
    xsks: MapHandle,
    worker_map: MapHandle,
    queue_map: MapHandle,
    queue_workers: MapHandle,
    ports: MapHandle,
    local_addrs: MapHandle,
    stats: MapHandle,
    worker_hits: MapHandle,
    link: Option<(OwnedFd, u32, &'static str)>,
}

impl XdpProgram {
    /// Loads the program (not attached anywhere yet) with `settings`.
    pub fn load(settings: &ProgramSettings) -> Result<XdpProgram, XdpError> {
        if !settings.layout.is_valid() {
            return Err(XdpError::Config(format!(
                "invalid CID layout {:?}",
                settings.layout
            )));
        }
        if settings.n_workers == 0 || settings.n_workers > MAX_WORKERS {
            return Err(XdpError::Config(format!(
                "workers must be 1..={MAX_WORKERS}"
            )));
        }
        let mut open = ObjectBuilder::default()
            .open_memory(PROGRAM_OBJECT)
            .map_err(bpf_err("open XDP object"))?;
        let cfg = QuenchConfig {
            cid_len: settings.layout.cid_len as u32,
            worker_offset: settings.layout.worker_offset() as u32,
            n_workers: settings.n_workers,
            drop_small_initial: u32::from(settings.drop_small_initial),
        };
        let mut set = false;
        for mut m in open.maps_mut() {
            if m.name().to_string_lossy().ends_with(".rodata") {
                let v = m
                    .initial_value_mut()
                    .ok_or_else(|| XdpError::Bpf(".rodata has no initial value".into()))?;
                if v.len() < size_of::<QuenchConfig>() {
                    return Err(XdpError::Bpf(format!(
                        ".rodata is {} bytes, expected a quench_config",
                        v.len()
                    )));
                }
                // SAFETY: QuenchConfig is repr(C), four u32 with no padding; viewing it as
                // bytes is sound.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&cfg as *const QuenchConfig).cast::<u8>(),
                        size_of::<QuenchConfig>(),
                    )
                };
                v[..bytes.len()].copy_from_slice(bytes);
                set = true;
            }
        }
        if !set {
            return Err(XdpError::Bpf("program has no .rodata config".into()));
        }
        let object = open.load().map_err(|e| {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            // As root, EACCES/EPERM here is the verifier's rejection, not a privilege issue.
            if e.kind() == libbpf_rs::ErrorKind::PermissionDenied && !root {
                XdpError::Permission(format!(
                    "loading the XDP program needs root or CAP_BPF + CAP_NET_ADMIN: {e}"
                ))
            } else {
                XdpError::Bpf(format!("load XDP program (verifier log above): {e}"))
            }
        })?;
        let handle = |name: &str| -> Result<MapHandle, XdpError> {
            let m = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| XdpError::Bpf(format!("map {name} missing")))?;
            MapHandle::try_from(&m).map_err(bpf_err("dup map fd"))
        };
        let prog = XdpProgram {
            xsks: handle("xsks_map")?,
            worker_map: handle("worker_map")?,
            queue_map: handle("queue_map")?,
            queue_workers: handle("queue_workers")?,
            ports: handle("ports")?,
            local_addrs: handle("local_addrs")?,
            stats: handle("stats")?,
            worker_hits: handle("worker_hits")?,
            object,
            link: None,
        };
        if prog.object.progs().count() != 1 {
            return Err(XdpError::Bpf(
                "expected exactly one program in the object".into(),
            ));
        }
        Ok(prog)
    }

    fn prog_fd(&self) -> BorrowedFd<'_> {
        // The object holds exactly one program (checked at load).
        let p = self.object.progs().next().expect("checked at load");
        // SAFETY: the fd belongs to the program owned by `self.object`, which outlives
        // the returned borrow (tied to &self).
        unsafe { BorrowedFd::borrow_raw(p.as_fd().as_raw_fd()) }
    }

    /// Attaches to `ifindex`, replacing a stale netlink-attached program.
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), XdpError> {
        self.detach();
        self.remove_stale(ifindex)?;
        let modes: &[(u32, &str)] = match mode {
            XdpMode::Native => &[(libbpf_sys::XDP_FLAGS_DRV_MODE, "native")],
            XdpMode::Generic => &[(libbpf_sys::XDP_FLAGS_SKB_MODE, "generic")],
            XdpMode::Auto => &[
                (libbpf_sys::XDP_FLAGS_DRV_MODE, "native"),
                (libbpf_sys::XDP_FLAGS_SKB_MODE, "generic"),
            ],
        };
        let mut last = None;
        for &(flags, name) in modes {
            // SAFETY: bpf_link_create_opts is plain data; zeroed then sized is how libbpf
            // expects it.
            let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
            opts.sz = size_of::<libbpf_sys::bpf_link_create_opts>() as _;
            opts.flags = flags;
            // SAFETY: valid program fd, interface index and options for the call.
            let fd = unsafe {
                libbpf_sys::bpf_link_create(
                    self.prog_fd().as_raw_fd(),
                    ifindex as i32,
                    libbpf_sys::BPF_XDP,
                    &opts,
                )
            };
            if fd >= 0 {
                tracing::info!(ifindex, mode = name, "XDP program attached");
                // SAFETY: a fresh link fd owned by nobody else.
                self.link = Some((unsafe { OwnedFd::from_raw_fd(fd) }, ifindex, name));
                return Ok(());
            }
            let e = std::io::Error::from_raw_os_error(-fd);
            tracing::debug!(ifindex, mode = name, "XDP attach failed: {e}");
            last = Some(e);
        }
        let e = last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL));
        Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => XdpError::Permission(format!("attach XDP: {e}")),
            Some(libc::EBUSY | libc::EEXIST) => XdpError::Busy(format!(
                "interface {ifindex} already has an XDP program attached by a live link: {e}"
            )),
            _ => XdpError::Io {
                op: "attach XDP program",
                source: e,
            },
        })
    }

    /// Detaches any program attached to `ifindex` through netlink (a stale run's).
    fn remove_stale(&self, ifindex: u32) -> Result<(), XdpError> {
        let xdp = libbpf_rs::Xdp::new(self.prog_fd());
        let q = match xdp.query(ifindex as i32, libbpf_rs::XdpFlags::NONE) {
            Ok(q) => q,
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {
                return Err(XdpError::IfaceNotFound(format!("ifindex {ifindex}")))
            }
            Err(e) => return Err(bpf_err("query XDP")(e)),
        };
        for (id, flags) in [
            (q.drv_prog_id, libbpf_rs::XdpFlags::DRV_MODE),
            (q.skb_prog_id, libbpf_rs::XdpFlags::SKB_MODE),
        ] {
            if id != 0 {
                tracing::warn!(ifindex, prog_id = id, "replacing a stale XDP program");
                // A link-attached program refuses (EBUSY): reported by attach.
                if let Err(e) = xdp.detach(ifindex as i32, flags) {
                    tracing::debug!("detaching stale program {id}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Detaches from the interface (idempotent).
    pub fn detach(&mut self) {
        if let Some((fd, ifindex, _)) = self.link.take() {
            drop(fd);
            tracing::info!(ifindex, "XDP program detached");
        }
    }

    pub fn is_attached(&self) -> bool {
        self.link.is_some()
    }

    /// How the program is attached: "native" or "generic" (None when detached).
    pub fn attach_mode(&self) -> Option<&'static str> {
        self.link.as_ref().map(|l| l.2)
    }

    /// The UDP ports to steer (replaces the set).
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), XdpError> {
        if ports.len() > MAX_PORTS as usize {
            return Err(XdpError::Config(format!("at most {MAX_PORTS} ports")));
        }
        let keys: Vec<[u8; 2]> = ports.iter().map(|p| p.to_ne_bytes()).collect();
        replace_set(&self.ports, &keys, "ports")
    }

    /// The destination addresses to steer (replaces the set): datagrams to our ports but
    /// other addresses stay the kernel's, so a box that forwards or bridges keeps passing
    /// other hosts' traffic. An empty set steers nothing.
    pub fn set_local_addrs(&self, addrs: &[IpAddr]) -> Result<(), XdpError> {
        let mut keys: Vec<[u8; 20]> = addrs.iter().map(|a| local_addr_key(*a)).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() > MAX_LOCAL_ADDRS as usize {
            return Err(XdpError::Config(format!(
                "{} local addresses; at most {MAX_LOCAL_ADDRS}",
                keys.len()
            )));
        }
        replace_set(&self.local_addrs, &keys, "local_addrs")
    }

    /// Records that `worker`'s socket is bound to `queue`.
    pub fn set_worker(&self, worker: u32, queue: u32, active: bool) -> Result<(), XdpError> {
        self.worker_map
            .update(&worker.to_ne_bytes(), &pair(queue, active), MapFlags::ANY)
            .map_err(bpf_err("worker_map update"))
    }

    /// Records which worker's socket takes mis-steered packets arriving on `queue`.
    pub fn set_queue_owner(&self, queue: u32, worker: u32, active: bool) -> Result<(), XdpError> {
        self.queue_map
            .update(&queue.to_ne_bytes(), &pair(worker, active), MapFlags::ANY)
            .map_err(bpf_err("queue_map update"))
    }

    /// Records the workers bound to `queue` (client-chosen DCIDs arriving there pick one).
    pub fn set_queue_workers(&self, queue: u32, workers: &[u32]) -> Result<(), XdpError> {
        if workers.len() > MAX_WORKERS as usize {
            return Err(XdpError::Config(format!(
                "{} workers on queue {queue}; at most {MAX_WORKERS}",
                workers.len()
            )));
        }
        // `struct quench_queue_workers`: a count, then MAX_WORKERS u32 slots.
        let mut v = vec![0u8; 4 * (1 + MAX_WORKERS as usize)];
        v[..4].copy_from_slice(&(workers.len() as u32).to_ne_bytes());
        for (slot, w) in v[4..].chunks_exact_mut(4).zip(workers) {
            slot.copy_from_slice(&w.to_ne_bytes());
        }
        self.queue_workers
            .update(&queue.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(bpf_err("queue_workers update"))
    }

    /// Puts an AF_XDP socket into the XSKMAP slot of `worker`.
    pub fn set_xsk(&self, worker: u32, fd: BorrowedFd<'_>) -> Result<(), XdpError> {
        let v = (fd.as_raw_fd() as u32).to_ne_bytes();
        self.xsks
            .update(&worker.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(bpf_err("xsks_map update"))
    }

    fn sum_percpu(map: &MapHandle, key: u32) -> u64 {
        match map.lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY) {
            Ok(Some(per_cpu)) => per_cpu
                .iter()
                .filter_map(|v| {
                    v.get(..8)
                        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                })
                .sum(),
            _ => 0,
        }
    }

    /// Per-outcome counters summed over CPUs.
    pub fn stats(&self) -> ProgramStats {
        let mut c = [0u64; STAT_COUNT as usize];
        for (i, v) in c.iter_mut().enumerate() {
            *v = Self::sum_percpu(&self.stats, i as u32);
        }
        ProgramStats::from_counters(&c)
    }

    /// Packets steered to each worker (before redirect), summed over CPUs.
    pub fn worker_hits(&self, n_workers: u32) -> Vec<u64> {
        (0..n_workers.min(MAX_WORKERS))
            .map(|w| Self::sum_percpu(&self.worker_hits, w))
            .collect()
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN) and returns its verdict
    /// (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4). Counters update as for real
    /// traffic; redirects are not performed.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        let p = self
            .object
            .progs_mut()
            .next()
            .ok_or_else(|| XdpError::Bpf("no program".into()))?;
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            ..Default::default()
        };
        p.test_run(input)
            .map(|o| o.return_value)
            .map_err(bpf_err("BPF_PROG_TEST_RUN"))
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        self.detach();
    }
}
