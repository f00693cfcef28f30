//! Gives back the pages of the agent's own relocation table once the
//! dynamic loader has applied it.
//!
//! A position-independent executable carries one relocation per pointer in
//! its data (`.rela.dyn`: ~26,000 entries, 630 KB for the x86_64 agent).
//! The loader reads all of it before `main` and never again, yet the pages
//! stay mapped and count in the agent's RSS for the rest of its life. The
//! Linux kernel does the same with its own start-up memory (`free_initmem`).
//!
//! `MADV_DONTNEED` on this read-only, never-written file mapping only
//! unmaps the pages: the page cache keeps them, and any later read maps them
//! again from the file, so nothing can break if something does read the
//! table again. Linking with packed relocations (`-z pack-relative-relocs`)
//! would shrink the table instead, but needs glibc 2.36 on every node
//! (Ubuntu 22.04 has 2.35), so the agent keeps classic relocations and
//! drops their pages.

/// Unmaps the pages that hold only the executable's dynamic relocations
/// (`DT_RELA`/`DT_REL`). Returns how many bytes were given back (0 when
/// there is nothing to do, e.g. a static or non-PIE build).
#[allow(unsafe_code)]
pub fn release() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the auxiliary vector's AT_PHDR/AT_PHNUM describe the
        // program headers the kernel mapped for this executable; they, and
        // the dynamic section they point to, stay mapped and unchanged for
        // the life of the process. The range given to madvise lies inside
        // one of the executable's segments that nothing writes.
        unsafe { release_linux() }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
unsafe fn release_linux() -> usize {
    #[cfg(target_pointer_width = "64")]
    type Phdr = libc::Elf64_Phdr;
    #[cfg(target_pointer_width = "32")]
    type Phdr = libc::Elf32_Phdr;
    /// `ElfN_Dyn`: a tag and a word, both word-sized.
    #[repr(C)]
    struct Dyn {
        tag: isize,
        val: usize,
    }
    const DT_NULL: isize = 0;
    const DT_RELA: isize = 7;
    const DT_RELASZ: isize = 8;
    const DT_REL: isize = 17;
    const DT_RELSZ: isize = 18;

    // SAFETY: see `release`.
    unsafe {
        let phdr = libc::getauxval(libc::AT_PHDR) as usize;
        let phnum = libc::getauxval(libc::AT_PHNUM) as usize;
        if phdr == 0 || phnum == 0 {
            return 0;
        }
        let headers = std::slice::from_raw_parts(phdr as *const Phdr, phnum);
        // The load bias: where the headers are, less where they were linked.
        let Some(own) = headers.iter().find(|h| h.p_type == libc::PT_PHDR) else { return 0 };
        let bias = phdr.wrapping_sub(own.p_vaddr as usize);
        let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) else { return 0 };
        // The segments the table may be dropped from: loaded from the file
        // and never written (read-only; on aarch64 and arm the linker puts
        // the table, the read-only data and the code in one R+X segment).
        let unwritten: Vec<(usize, usize)> = headers
            .iter()
            .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0)
            .map(|h| (bias + h.p_vaddr as usize, bias + (h.p_vaddr + h.p_filesz) as usize))
            .collect();
        let mut entry = (bias + dynamic.p_vaddr as usize) as *const Dyn;
        let (mut addr, mut size) = (0usize, 0usize);
        loop {
            let d = &*entry;
            match d.tag {
                DT_NULL => break,
                DT_RELA | DT_REL => addr = d.val,
                DT_RELASZ | DT_RELSZ => size = d.val,
                _ => {}
            }
            entry = entry.add(1);
        }
        if addr == 0 || size == 0 {
            return 0;
        }
        // glibc rewrites these addresses to run-time ones in place on most
        // architectures, not on all: take the one that falls in the segment.
        let within = |start: usize| unwritten.iter().any(|&(s, e)| s <= start && start.saturating_add(size) <= e);
        let start = if within(addr) { addr } else { addr.wrapping_add(bias) };
        if !within(start) {
            return 0;
        }
        let end = start + size;
        let page = match usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)) {
            Ok(p) if p.is_power_of_two() => p,
            _ => return 0,
        };
        // Whole pages only: the pages at either end hold other sections too.
        let (first, last) = ((start + page - 1) & !(page - 1), end & !(page - 1));
        if last <= first {
            return 0;
        }
        match libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED) {
            0 => last - first,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The test binary is a PIE with relocations like the agent: the table
    /// is found, whole pages of it are given back, and the process goes on
    /// reading its relocated data (formatting, which goes through vtables
    /// and string tables the relocations set up).
    #[test]
    fn gives_back_the_relocation_pages_and_nothing_breaks() {
        let released = super::release();
        assert!(released > 0, "a PIE test binary has relocation pages to give back");
        assert_eq!(released % 4096, 0);
        let again = format!("{:?}", vec![Some("still works"); 2]);
        assert!(again.contains("still works"));
    }
}
