-- Each service owns its database.
CREATE DATABASE customer OWNER huitou;
CREATE DATABASE loyalty OWNER huitou;
CREATE DATABASE coupon OWNER huitou;
CREATE DATABASE notification OWNER huitou;
