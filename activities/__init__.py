"""Everything with side effects: profiles, decision records, model calls, reviews, deliveries."""
