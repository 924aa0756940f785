use pgrx::prelude::*;

#[pg_test]
fn installs() {
    let n = Spi::get_one::<i64>("SELECT count(*) FROM possync.account").expect("query");
    assert_eq!(n, Some(0));
}
