//! Tuning settings read from the environment outside [`crate::config::Config`] — the runtime's
//! (`runtime.rs`) and the load generator's (`bench`): a number within its bounds, or its default
//! when the variable is unset, and an error naming the variable otherwise.

/// The value of the setting `name` (`setting`, the variable's value if set): `default` when
/// absent, else a number within `range`, or an error naming the setting and what it takes.
pub fn within<T>(name: &str, setting: Option<&str>, range: std::ops::RangeInclusive<T>, default: T, what: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(value) = setting else { return Ok(default) };
    match value.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => anyhow::bail!("{name}: {what} from {} to {}, not {value:?}", range.start(), range.end()),
    }
}
