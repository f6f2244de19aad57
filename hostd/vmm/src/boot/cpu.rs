//! The x86-64 register state a vCPU starts in: GDT, identity page tables, segment and control
//! registers for the two entry modes (PVH 32-bit protected mode, Linux 64-bit long mode),
//! FPU, boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{
    Msrs, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK_TOP, PD_FIRST, PDPT, PML4};

use super::BootError;

/// GDT selectors. Linux's 64-bit boot protocol requires `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18.
pub const SELECTOR_CODE32: u16 = 0x08;
/// 64-bit code.
pub const SELECTOR_CODE64: u16 = 0x10;
/// Flat data.
pub const SELECTOR_DATA: u16 = 0x18;
/// Task state segment (VMX needs a usable TR).
pub const SELECTOR_TSS: u16 = 0x20;

/// GDT entries: null, 32-bit code, 64-bit code, data, TSS (all flat).
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xC09B, 0, 0xF_FFFF),
    gdt_entry(0xA09B, 0, 0xF_FFFF),
    gdt_entry(0xC093, 0, 0xF_FFFF),
    gdt_entry(0x808B, 0, 0xF_FFFF),
];

/// Encodes a segment descriptor from its flags (access byte and the G/DB/L nibble), base and
/// limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xFF00_0000) << 32)
        | ((flags as u64 & 0xF0FF) << 40)
        | ((limit as u64 & 0x000F_0000) << 32)
        | ((base as u64 & 0x00FF_FFFF) << 16)
        | (limit as u64 & 0x0000_FFFF)
}

/// Decodes a GDT entry into the KVM segment register form.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xFF_FFFF) | ((entry >> 32) & 0xFF00_0000);
    let raw_limit = ((entry & 0xFFFF) | ((entry >> 32) & 0xF_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages; KVM wants bytes.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xF) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// How a vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh {
        /// Entry point from the ELF note.
        entry: u32,
        /// Address of `hvm_start_info`.
        start_info: u32,
    },
    /// Linux 64-bit boot protocol: long mode, identity paging, `%rsi` = zero page.
    Linux64 {
        /// 64-bit entry (load address + 0x200).
        entry: u64,
        /// Address of `boot_params`.
        zero_page: u64,
    },
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the GDT, an empty IDT and the identity page tables (4 GiB in 2 MiB pages).
pub fn write_tables(memory: &GuestMemoryMmap) -> Result<(), BootError> {
    let write = |what, addr: GuestAddress, bytes: &[u8]| {
        memory
            .write_slice(bytes, addr)
            .map_err(|source| BootError::GuestWrite { what, source })
    };
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write("GDT", BOOT_GDT, &gdt)?;
    write("IDT", BOOT_IDT, &0u64.to_le_bytes())?;

    const PRESENT_WRITABLE: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write("PML4", PML4, &(PDPT.0 | PRESENT_WRITABLE).to_le_bytes())?;
    let pdpt: Vec<u8> = (0..4u64)
        .flat_map(|i| ((PD_FIRST.0 + i * 0x1000) | PRESENT_WRITABLE).to_le_bytes())
        .collect();
    write("PDPT", PDPT, &pdpt)?;
    let pds: Vec<u8> = (0..4 * 512u64)
        .flat_map(|i| ((i << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE).to_le_bytes())
        .collect();
    write("page directories", PD_FIRST, &pds)
}

/// General registers at entry.
pub fn regs(mode: EntryMode) -> kvm_regs {
    match mode {
        // PVH leaves the stack undefined; a valid one costs nothing and keeps a guest that
        // pushes before setting its own from faulting.
        EntryMode::Pvh { entry, start_info } => kvm_regs {
            rip: u64::from(entry),
            rbx: u64::from(start_info),
            rsp: BOOT_STACK_TOP,
            rflags: 0x2,
            ..Default::default()
        },
        EntryMode::Linux64 { entry, zero_page } => kvm_regs {
            rip: entry,
            rsi: zero_page,
            rsp: BOOT_STACK_TOP,
            rbp: BOOT_STACK_TOP,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

/// Segment and control registers at entry, starting from the vCPU's current `sregs` (which
/// carry KVM's APIC base and other fields we leave alone).
pub fn sregs(mode: EntryMode, mut sregs: kvm_sregs) -> kvm_sregs {
    let data = segment(GDT[3], SELECTOR_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[4], SELECTOR_TSS);
    sregs.gdt.base = BOOT_GDT.0;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT.0;
    sregs.idt.limit = 7;
    match mode {
        EntryMode::Pvh { .. } => {
            sregs.cs = segment(GDT[1], SELECTOR_CODE32);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 { .. } => {
            sregs.cs = segment(GDT[2], SELECTOR_CODE64);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4.0;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// FPU state at reset: x87 control word 0x37F, MXCSR 0x1F80.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// MSRs written at every boot: syscall entry points cleared, TSC at 0, fast strings on.
pub fn boot_msrs() -> Result<Msrs, BootError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ])
    .map_err(|_| BootError::Msrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[reg + i] = b as _;
    }
}

/// Local APIC at boot: LINT0 takes the 8259's interrupts (ExtINT), LINT1 is NMI, as a
/// PC BIOS leaves them.
pub fn lapic(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    lapic
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes};

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment(GDT[2], SELECTOR_CODE64);
        assert_eq!(
            (code64.base, code64.limit, code64.l, code64.db),
            (0, 0xFFFF_FFFF, 1, 0)
        );
        assert_eq!((code64.type_, code64.present, code64.s), (0xB, 1, 1));
        let code32 = segment(GDT[1], SELECTOR_CODE32);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let data = segment(GDT[3], SELECTOR_DATA);
        assert_eq!((data.type_, data.db, data.limit), (0x3, 1, 0xFFFF_FFFF));
        assert_eq!(segment(GDT[4], SELECTOR_TSS).type_, 0xB);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&memory).unwrap();
        let pml4: u64 = memory.read_obj(PML4).unwrap();
        assert_eq!(pml4 & !0xFFF, PDPT.0);
        let pdpt3: u64 = memory.read_obj(PDPT.unchecked_add(24)).unwrap();
        assert_eq!(pdpt3 & !0xFFF, PD_FIRST.0 + 0x3000);
        // Last 2 MiB page of the last PD maps 4 GiB - 2 MiB.
        let last: u64 = memory
            .read_obj(PD_FIRST.unchecked_add(4 * 4096 - 8))
            .unwrap();
        assert_eq!(last & !0xFFF, (4 << 30) - (2 << 20));
        assert_eq!(last & 0x83, 0x83);
    }

    #[test]
    fn entry_modes_set_the_protocol_registers() {
        let pvh = EntryMode::Pvh {
            entry: 0x10_0000,
            start_info: 0x6000,
        };
        assert_eq!((regs(pvh).rip, regs(pvh).rbx), (0x10_0000, 0x6000));
        let s = sregs(pvh, kvm_sregs::default());
        assert_eq!(
            (s.cr0 & CR0_PG, s.efer, s.cs.selector),
            (0, 0, SELECTOR_CODE32)
        );

        let linux = EntryMode::Linux64 {
            entry: 0x10_0200,
            zero_page: 0x7000,
        };
        assert_eq!((regs(linux).rip, regs(linux).rsi), (0x10_0200, 0x7000));
        let s = sregs(linux, kvm_sregs::default());
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4.0);
    }

    #[test]
    fn lapic_lint_pins_get_extint_and_nmi() {
        let state = lapic(kvm_lapic_state::default());
        assert_eq!((state.regs[APIC_LVT0 + 1] as u8) & 0x7, 7);
        assert_eq!((state.regs[APIC_LVT1 + 1] as u8) & 0x7, 4);
    }
}
