//! One module per subcommand.

pub mod analyze;
pub mod bench;
pub mod embed;
pub mod eval;
pub mod plot;
pub mod train;
