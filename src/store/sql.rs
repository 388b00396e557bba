//! Dynamic SQL for both databases: sqlx's `QueryBuilder` writes `?` for the
//! `Any` driver, which PostgreSQL does not accept, so filters and `IN`
//! lists are built here with numbered placeholders instead.

use std::fmt::Write as _;

use sqlx::{Any, Arguments, AssertSqlSafe, Encode, Type, any::AnyArguments};

/// Dynamic SQL with numbered placeholders (`$1`, `$2`, …), which SQLite and
/// PostgreSQL both accept. (sqlx's `QueryBuilder` writes `?` for `Any`.)
pub(super) struct Sql {
    text: String,
    arguments: AnyArguments,
    numbered: bool,
}

impl Sql {
    pub(super) fn new(text: &'static str) -> Self {
        Self {
            text: text.to_owned(),
            arguments: AnyArguments::default(),
            numbered: true,
        }
    }

    /// With `?` placeholders, for SQLite only: SQLite resolves each `$N` by
    /// scanning the names before it, so a statement of thousands of numbered
    /// values costs seconds to prepare, and of `?`s, microseconds.
    pub(super) fn positional(text: &'static str) -> Self {
        Self {
            numbered: false,
            ..Self::new(text)
        }
    }

    /// How many values are bound so far.
    pub(super) fn bound(&self) -> usize {
        self.arguments.len()
    }

    pub(super) fn push(&mut self, text: &'static str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(super) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: for<'q> Encode<'q, Any> + Type<Any>,
    {
        self.arguments
            .add(value)
            .expect("encoding to Any cannot fail");
        if self.numbered {
            write!(self.text, "${}", self.arguments.len())
                .expect("writing to a String cannot fail");
        } else {
            self.text.push('?');
        }
        self
    }

    /// The query, ready to run. Only `&'static str` fragments went into the
    /// text; every value is a bound parameter.
    pub(super) fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        sqlx::query_with(AssertSqlSafe(self.text), self.arguments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_the_order_values_are_bound() {
        let mut sql = Sql::new("SELECT * FROM t WHERE 1 = 1");
        sql.push(" AND a = ")
            .push_bind(1_i64)
            .push(" AND b IN (")
            .push_bind("x".to_owned())
            .push(", ")
            .push_bind("y".to_owned())
            .push(")");
        assert_eq!(
            sql.text,
            "SELECT * FROM t WHERE 1 = 1 AND a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(sql.arguments.len(), 3);
    }
}
