//! Provisio providers.
