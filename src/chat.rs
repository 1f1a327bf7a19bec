//! PLACEHOLDER: being written (helper).
