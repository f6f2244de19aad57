//! Who is calling and what they may do: the socket's peer credentials (SO_PEERCRED)
//! mapped to a role. Root and members of the configured admin group are appliance admins;
//! users named as admins of a stack (by user, group, uid or gid) are stack admins of those
//! stacks; anyone else who can open the socket (mode 0660) is a viewer.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::net::UnixStream;

use hostd_proto::{Actor, Principal, Role, name};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User};

use crate::store::StackRecord;

/// The process at the other end of a connection, as the kernel vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
    /// User name, when the user has a passwd entry.
    pub user: Option<String>,
    /// Every group the user is in (primary and supplementary).
    pub groups: BTreeSet<u32>,
}

impl Peer {
    /// The peer of a connected socket, with its groups looked up.
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
        Ok(Self::lookup(
            cred.uid(),
            cred.gid(),
            cred.pid().max(0) as u32,
        ))
    }

    /// A peer from its ids, with the user name and groups from the user database.
    pub fn lookup(uid: u32, gid: u32, pid: u32) -> Self {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let mut groups = BTreeSet::from([gid]);
        if let Some(user) = &user {
            if let Ok(cname) = CString::new(user.name.as_str()) {
                if let Ok(list) = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid)) {
                    groups.extend(list.iter().map(|g| g.as_raw()));
                }
            }
        }
        Self {
            uid,
            gid,
            pid,
            user: user.map(|u| u.name),
            groups,
        }
    }

    /// Whether `principal` names this peer.
    pub fn is(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Uid(uid) => *uid == self.uid,
            Principal::Gid(gid) => self.groups.contains(gid),
            Principal::User(user) => self.user.as_deref() == Some(user.as_str()),
            Principal::Group(group) => Group::from_name(group)
                .ok()
                .flatten()
                .is_some_and(|g| self.groups.contains(&g.gid.as_raw())),
        }
    }
}

/// A request's caller with its role, resolved against the current stacks.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The peer.
    pub peer: Peer,
    /// Its role.
    pub role: Role,
    /// For a stack admin: their stacks.
    pub stacks: BTreeSet<String>,
}

impl Caller {
    /// Resolves `peer`'s role.
    pub fn resolve(
        peer: &Peer,
        admin_gid: Option<u32>,
        stacks: &BTreeMap<String, StackRecord>,
    ) -> Self {
        let admin = peer.uid == 0 || admin_gid.is_some_and(|gid| peer.groups.contains(&gid));
        if admin {
            return Self {
                peer: peer.clone(),
                role: Role::Admin,
                stacks: BTreeSet::new(),
            };
        }
        let mine: BTreeSet<String> = stacks
            .values()
            .filter(|stack| stack.admins.iter().any(|p| peer.is(p)))
            .map(|stack| stack.name.clone())
            .collect();
        Self {
            peer: peer.clone(),
            role: if mine.is_empty() {
                Role::Viewer
            } else {
                Role::StackAdmin
            },
            stacks: mine,
        }
    }

    /// The caller as an event's actor.
    pub fn actor(&self) -> Actor {
        Actor::User {
            uid: self.peer.uid,
            pid: self.peer.pid,
            name: name(self.peer.user.as_deref().unwrap_or("")),
        }
    }

    /// May see instances of `stack` (none: appliance-level).
    pub fn can_see(&self, stack: Option<&str>) -> bool {
        match self.role {
            Role::Admin | Role::Viewer => true,
            Role::StackAdmin => stack.is_some_and(|s| self.stacks.contains(s)),
        }
    }

    /// May change instances of `stack`.
    pub fn can_manage(&self, stack: Option<&str>) -> bool {
        match self.role {
            Role::Admin => true,
            Role::StackAdmin => stack.is_some_and(|s| self.stacks.contains(s)),
            Role::Viewer => false,
        }
    }

    /// Short description for refusals: `uid 1000 (alice), a viewer`.
    pub fn describe(&self) -> String {
        let who = match &self.peer.user {
            Some(user) => format!("uid {} ({user})", self.peer.uid),
            None => format!("uid {}", self.peer.uid),
        };
        let role = match self.role {
            Role::Admin => "an appliance admin".to_owned(),
            Role::StackAdmin => format!(
                "admin of stack {}",
                self.stacks.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            Role::Viewer => "a viewer (read-only)".to_owned(),
        };
        format!("{who}, {role}")
    }
}

/// The gid of a group name.
pub fn group_gid(group: &str) -> Option<u32> {
    Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostd_proto::Quota;

    fn stack(name: &str, admins: Vec<Principal>) -> (String, StackRecord) {
        (
            name.to_owned(),
            StackRecord {
                name: name.to_owned(),
                admins,
                quota: Quota::default(),
            },
        )
    }

    #[test]
    fn roles_follow_uid_groups_and_stack_admins() {
        let stacks: BTreeMap<_, _> = [
            stack("blue", vec![Principal::Uid(1001)]),
            stack("red", vec![Principal::Gid(500)]),
        ]
        .into();
        let root = Caller::resolve(&Peer::lookup(0, 0, 1), None, &stacks);
        assert_eq!(root.role, Role::Admin);
        assert!(root.can_manage(None));
        let blue = Caller::resolve(&Peer::lookup(1001, 1001, 1), None, &stacks);
        assert_eq!(blue.role, Role::StackAdmin);
        assert!(blue.can_manage(Some("blue")));
        assert!(!blue.can_see(Some("red")));
        assert!(!blue.can_see(None));
        let red = Caller::resolve(&Peer::lookup(1002, 500, 1), None, &stacks);
        assert_eq!(red.stacks, BTreeSet::from(["red".to_owned()]));
        let viewer = Caller::resolve(&Peer::lookup(1003, 1003, 1), None, &stacks);
        assert_eq!(viewer.role, Role::Viewer);
        assert!(viewer.can_see(Some("red")));
        assert!(!viewer.can_manage(Some("red")));
        let group_admin = Caller::resolve(&Peer::lookup(1004, 77, 1), Some(77), &stacks);
        assert_eq!(group_admin.role, Role::Admin);
        assert!(viewer.describe().contains("viewer"));
    }
}
