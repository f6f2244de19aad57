//! CPUID a vCPU reports: KVM's supported set, with this vCPU's APIC id, the VM's topology
//! (one socket, one thread per core, `vcpus` cores) and the hypervisor bit.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xB;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1F;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001E;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits needed to hold `count` distinct ids.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - (count - 1).leading_zeros()
    }
}

/// Adjusts one entry for vCPU `apic_id` of `vcpus`.
fn adjust(entry: &mut kvm_cpuid_entry2, apic_id: u32, vcpus: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC id, EBX[23:16] addressable logical processors.
            entry.ebx = (entry.ebx & 0xFFFF) | (apic_id << 24) | ((vcpus & 0xFF) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if vcpus > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
            entry.eax = (entry.eax & 0x3FFF) | ((vcpus - 1) << 26);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = apic_id;
            let (shift, count, level) = match entry.index {
                0 => (0, 1, TOPOLOGY_LEVEL_SMT),
                1 => (id_bits(vcpus), vcpus, TOPOLOGY_LEVEL_CORE),
                _ => (0, 0, 0),
            };
            entry.eax = shift;
            entry.ebx = count;
            entry.ecx = (level << 8) | (entry.index & 0xFF);
        }
        LEAF_EXT_FEATURES => {
            if vcpus > 1 {
                entry.ecx |= ECX_AMD_CMP_LEGACY;
            } else {
                entry.ecx &= !ECX_AMD_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZES => {
            // ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1.
            entry.ecx = (entry.ecx & !0xF0FF) | (id_bits(vcpus) << 12) | ((vcpus - 1) & 0xFF);
        }
        LEAF_AMD_TOPOLOGY => {
            entry.eax = apic_id;
            entry.ebx = apic_id & 0xFF; // one thread per core: core id = APIC id
            entry.ecx = 0; // node 0, one node
        }
        _ => {}
    }
}

/// The CPUID of vCPU `apic_id` (APIC id = vCPU index) in a VM of `vcpus` vCPUs.
pub fn for_vcpu(supported: &CpuId, apic_id: u32, vcpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        adjust(entry, apic_id, vcpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xFFFF_FFFF,
            ..Default::default()
        }
    }

    #[test]
    fn id_bits_cover_the_count() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }

    #[test]
    fn apic_id_topology_and_hypervisor_bit_are_set() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_AMD_SIZES, 0),
        ])
        .unwrap();
        let cpuid = for_vcpu(&supported, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xFF, 3);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(
            (e[1].edx, e[1].ebx, e[1].ecx >> 8),
            (2, 1, TOPOLOGY_LEVEL_SMT)
        );
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8),
            (2, 3, TOPOLOGY_LEVEL_CORE)
        );
        assert_eq!(e[3].ecx & 0xFF, 2);
    }
}
