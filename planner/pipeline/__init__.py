"""Pipeline schedules and their simulation.

schedules: the schedule registry (SCHEDULE_SPECS: one ScheduleSpec per schedule), the per-rank action
orders and the in-flight counts read off them. simulator: one training step of a Plan as a Timeline."""
