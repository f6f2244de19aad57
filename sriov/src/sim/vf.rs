//! The simulated PF drivers' VF settings (what rtnetlink reaches on a real host), stored as a
//! JSON file per VF beside the PF's sysfs entry, and gone with the VFs.
//!
//! A PF on `igb` behaves like the real igb driver: no VF link-state control (`EOPNOTSUPP`),
//! no 802.1ad port VLAN (`EPROTONOSUPPORT`), no minimum TX rate and no maximum above the 1000
//! Mbit/s link (`EINVAL`). Other drivers accept every setting.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{SimSpec, tree};
use crate::PciAddress;
use crate::vf_config::VfControl;
use crate::vf_settings::{LinkState, VfSetting, VfState, VlanProto};

/// The directory holding a PF's VF settings.
pub(super) const VF_CONFIG_DIR: &str = "sim_vf_config";

/// VF settings of the simulated PFs.
#[derive(Debug)]
pub struct SimVfControl {
    root: PathBuf,
    spec: SimSpec,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SimVfControl {
    pub(super) fn new(root: PathBuf, spec: SimSpec) -> Self {
        Self { root, spec }
    }

    /// The PF behind a netdev name, through `class/net/<name>`.
    fn pf_of(&self, netdev: &str) -> io::Result<PciAddress> {
        let target = fs::read_link(tree::sys(&self.root).join("class/net").join(netdev))
            .map_err(|_| errno(libc::ENODEV))?;
        // ../../devices/pci0000:00/<addr>/net/<name>
        let addr = target
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        addr.and_then(|a| a.parse().ok())
            .ok_or_else(|| errno(libc::ENODEV))
    }

    fn num_vfs(&self, pf: PciAddress) -> io::Result<u32> {
        let text = fs::read_to_string(tree::dev_dir(&self.root, pf).join("sriov_numvfs"))
            .map_err(|_| errno(libc::EOPNOTSUPP))?;
        text.trim().parse().map_err(|_| errno(libc::EIO))
    }

    fn path(&self, pf: PciAddress, index: u32) -> PathBuf {
        tree::dev_dir(&self.root, pf)
            .join(VF_CONFIG_DIR)
            .join(format!("{index}.json"))
    }

    fn load(&self, pf: PciAddress, index: u32) -> io::Result<VfState> {
        match fs::read(self.path(pf, index)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            // A new VF: what igb reports for one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(VfState {
                index,
                spoof_check: Some(true),
                trust: Some(false),
                link_state: Some(LinkState::Auto),
                ..VfState::default()
            }),
            Err(e) => Err(e),
        }
    }

    fn refuse_like_the_driver(&self, pf: PciAddress, setting: VfSetting) -> io::Result<()> {
        let is_igb = self
            .spec
            .pfs
            .iter()
            .any(|p| p.addr == pf && p.driver == "igb");
        if !is_igb {
            return Ok(());
        }
        match setting {
            VfSetting::LinkState(_) => Err(errno(libc::EOPNOTSUPP)),
            VfSetting::Vlan(v) if v.proto == VlanProto::Dot1Ad => Err(errno(libc::EPROTONOSUPPORT)),
            VfSetting::Rate(r) if r.min_mbps != 0 || r.max_mbps > 1000 => Err(errno(libc::EINVAL)),
            _ => Ok(()),
        }
    }
}

impl VfControl for SimVfControl {
    fn apply(&self, pf_netdev: &str, index: u32, setting: VfSetting) -> io::Result<()> {
        let pf = self.pf_of(pf_netdev)?;
        if index >= self.num_vfs(pf)? {
            return Err(errno(libc::EINVAL));
        }
        self.refuse_like_the_driver(pf, setting)?;
        let mut state = self.load(pf, index)?;
        match setting {
            // All zeros removes the PF-set address, as on igb: the VF reports none.
            VfSetting::Mac(m) => state.mac = (m.0 != [0; 6]).then_some(m),
            VfSetting::Vlan(v) => state.vlan = v,
            VfSetting::SpoofCheck(on) => state.spoof_check = Some(on),
            VfSetting::Trust(on) => state.trust = Some(on),
            VfSetting::Rate(r) => state.rate = r,
            VfSetting::LinkState(l) => state.link_state = Some(l),
        }
        let path = self.path(pf, index);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, serde_json::to_vec(&state).map_err(io::Error::other)?)
    }

    fn read(&self, pf_netdev: &str) -> io::Result<Vec<VfState>> {
        let pf = self.pf_of(pf_netdev)?;
        (0..self.num_vfs(pf)?).map(|i| self.load(pf, i)).collect()
    }
}
