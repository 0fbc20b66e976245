//! roost's shell: binds the core's machines to the operating system.
