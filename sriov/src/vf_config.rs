//! Configuring VFs through their PF: each setting applied on its own (so a refusal names the
//! setting), then read back from the PF's VF list and compared (so a driver that accepts a
//! value and ignores it is caught, never a silent success).

use std::fmt::Debug;
use std::io;

use crate::PciAddress;
use crate::discovery::{device_dir, read_function};
use crate::error::SriovError;
use crate::host::Host;
use crate::vf_settings::{MacAddr, VfSetting, VfSettings, VfState};

/// Applies VF settings and reads VF state: the PF's driver through rtnetlink on a real host,
/// a model in the simulator.
pub trait VfControl: Send + Sync + Debug {
    /// Applies one setting to VF `index` of the PF whose netdev is `pf_netdev`.
    fn apply(&self, pf_netdev: &str, index: u32, setting: VfSetting) -> io::Result<()>;
    /// Every VF's state, as the PF's driver reports it.
    fn read(&self, pf_netdev: &str) -> io::Result<Vec<VfState>>;
}

/// What configuring needs to know about the PF.
struct PfNet {
    netdev: String,
    driver: String,
    num_vfs: u32,
}

fn pf_net(host: &Host, pf: PciAddress) -> Result<PfNet, SriovError> {
    let function = read_function(host, pf)?;
    let num_vfs_path = device_dir(host, pf).join("sriov_numvfs");
    if !num_vfs_path.exists() {
        return Err(SriovError::NotSriovCapable { addr: pf });
    }
    let num_vfs = host.read_u32(&num_vfs_path)?;
    let netdev = function
        .netdevs
        .first()
        .map(|n| n.name.clone())
        .ok_or_else(|| SriovError::PfHasNoNetdev {
            pf,
            driver: function.driver.name().to_string(),
        })?;
    Ok(PfNet {
        netdev,
        driver: function.driver.name().to_string(),
        num_vfs,
    })
}

/// Applies `settings` to VF `index` of `pf`, then reads them back. Returns the VF's state.
pub fn configure_vf(
    host: &Host,
    pf: PciAddress,
    index: u32,
    settings: &VfSettings,
) -> Result<VfState, SriovError> {
    settings.validate()?;
    let net = pf_net_with_vf(host, pf, index)?;
    for setting in settings.each() {
        apply(host, pf, &net, index, setting)?;
    }
    let state = read_one(host, pf, &net, index)?;
    for setting in settings.each() {
        if !setting.applied_in(&state) {
            return Err(SriovError::VfSettingNotApplied {
                pf,
                driver: net.driver.clone(),
                index,
                setting: setting.to_string(),
                reported: format!("{state:?}"),
            });
        }
    }
    Ok(state)
}

/// Removes the MAC address the PF set on VF `index` of `pf` (the all-zero address, which
/// the PF's driver takes as "none": the VF's next user picks its own), then reads back that
/// it has none. [`configure_vf`] refuses the all-zero address: it only sets unicast ones.
pub fn clear_vf_mac(host: &Host, pf: PciAddress, index: u32) -> Result<VfState, SriovError> {
    let net = pf_net_with_vf(host, pf, index)?;
    apply(host, pf, &net, index, VfSetting::Mac(MacAddr([0; 6])))?;
    let state = read_one(host, pf, &net, index)?;
    match state.mac {
        None => Ok(state),
        Some(mac) => Err(SriovError::VfSettingNotApplied {
            pf,
            driver: net.driver,
            index,
            setting: "mac cleared".into(),
            reported: format!("mac {mac}"),
        }),
    }
}

/// The PF's netdev, checked to have VF `index`.
fn pf_net_with_vf(host: &Host, pf: PciAddress, index: u32) -> Result<PfNet, SriovError> {
    let net = pf_net(host, pf)?;
    if index >= net.num_vfs {
        return Err(SriovError::VfIndexOutOfRange {
            pf,
            index,
            num_vfs: net.num_vfs,
        });
    }
    Ok(net)
}

fn apply(
    host: &Host,
    pf: PciAddress,
    net: &PfNet,
    index: u32,
    setting: VfSetting,
) -> Result<(), SriovError> {
    log::info!("PF {pf} ({}): VF {index} {setting}", net.netdev);
    host.vf_control()
        .apply(&net.netdev, index, setting)
        .map_err(|source| refusal(pf, net, index, setting, source))
}

/// Every VF's settings, as the PF's driver reports them.
pub fn read_vf_states(host: &Host, pf: PciAddress) -> Result<Vec<VfState>, SriovError> {
    let net = pf_net(host, pf)?;
    host.vf_control()
        .read(&net.netdev)
        .map_err(|source| SriovError::Netlink {
            op: format!("read the VF list of {} ({pf})", net.netdev),
            advice: "see `dmesg`".into(),
            source,
        })
}

fn read_one(host: &Host, pf: PciAddress, net: &PfNet, index: u32) -> Result<VfState, SriovError> {
    read_vf_states(host, pf)?
        .into_iter()
        .find(|s| s.index == index)
        .ok_or(SriovError::VfIndexOutOfRange {
            pf,
            index,
            num_vfs: net.num_vfs,
        })
}

fn refusal(
    pf: PciAddress,
    net: &PfNet,
    index: u32,
    setting: VfSetting,
    source: io::Error,
) -> SriovError {
    let (pf, driver, setting_name) = (pf, net.driver.clone(), setting.name().to_string());
    match source.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT) => SriovError::VfSettingUnsupported {
            pf,
            driver,
            index,
            setting: setting_name,
            source,
        },
        Some(libc::EINVAL) | Some(libc::ERANGE) => SriovError::VfSettingRejected {
            pf,
            driver,
            index,
            setting: setting.to_string(),
            source,
        },
        _ => SriovError::Netlink {
            op: format!("set VF {index} {setting} on {} ({pf})", net.netdev),
            advice: match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => "run as root (CAP_NET_ADMIN)".into(),
                _ => "see `dmesg`".into(),
            },
            source,
        },
    }
}
