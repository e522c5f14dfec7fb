//! Domain types: every value that reaches a store has been parsed here.

mod email;
mod name;
mod user;

pub use email::{Email, EmailError};
pub use name::{UserName, UserNameError};
pub use user::{NewUser, User};
